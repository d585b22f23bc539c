import ctypes

import pytest

from capsnet.run import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.mark.parametrize("setting, expected", [(None, 2), ("1", 2), ("0", 0)])
def test_freed_memory_is_kept_unless_turned_off(monkeypatch: pytest.MonkeyPatch,
                                                setting: str | None, expected: int):
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    if setting is None:
        monkeypatch.delenv("CAPSNET_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("CAPSNET_KEEP_FREED_MEMORY", setting)
    memory.tune_allocator()
    assert len(libc.calls) == expected
    assert all(value == memory.KEEP_BELOW for _, value in libc.calls)


@pytest.mark.parametrize("libc", ["missing", "without mallopt"])
def test_a_libc_without_mallopt_is_left_alone_and_huge_pages_still_apply(
        libc: str, monkeypatch: pytest.MonkeyPatch):
    def missing(name: str) -> None:
        raise OSError(name)
    monkeypatch.setattr(ctypes, "CDLL", missing if libc == "missing" else lambda name: object())
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.delenv("CAPSNET_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    memory.tune_allocator()  # no error escapes
    assert memory.os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


def test_importing_capsnet_changes_nothing_in_the_process():
    """No allocator call and no torch on `import capsnet`: the commands that train tune it."""
    import subprocess
    import sys
    code = ("import ctypes, sys\n"
            "ctypes.CDLL = lambda name: sys.exit('mallopt called on import')\n"
            "import capsnet\n"
            "print('torch' in sys.modules)\n")
    import os
    from pathlib import Path
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(Path(__file__).resolve().parents[1]),
                          env={**os.environ, "CAPSNET_KEEP_FREED_MEMORY": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
