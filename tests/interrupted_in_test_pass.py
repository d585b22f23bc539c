"""train.py that receives SIGINT at the first forward pass of its first test pass: run in a fresh
process, so that the resumed run (another fresh process) starts with a test pass too."""
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

if __name__ == "__main__":
    import capsnet.training as training
    original = training.add_to_meters

    def add_and_interrupt(meters, state):
        original(meters, state)
        if not state["train"]:
            training.add_to_meters = original
            signal.raise_signal(signal.SIGINT)
    training.add_to_meters = add_and_interrupt
    sys.exit(train.main())
