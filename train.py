"""Train CapsNet: `python train.py [--epochs N ...]`. The defaults are config.py's values (edit
them there); a flag given wins. `python train.py --help` lists every flag."""
from __future__ import annotations

from pathlib import Path

from capsnet.cli import exit_with
from capsnet.train import main as train

CONFIG = Path(__file__).with_name("config.py")


def main(argv: list[str] | None = None) -> int:
    return train(argv, CONFIG, prog="train.py")


if __name__ == "__main__":
    exit_with(main())
