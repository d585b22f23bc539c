"""MATLAB files through scipy (SVHN, affNIST), with one clear line for a damaged file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError


def load(path: Path) -> dict[str, Any]:
    import scipy.io
    from scipy.io.matlab import MatReadError
    try:
        return scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, MatReadError) as error:
        raise UserError(f"{path} is not a readable .mat file ({type(error).__name__})") from None
