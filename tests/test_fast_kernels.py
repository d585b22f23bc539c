"""The code you read is the code that trains: a run with --no-fast-kernels executes the layers as
written in capsnet/model.py and capsnet/routing (and never the fast forms); the default run
executes the fast forms (and never the plain ones); both run the model's own forward methods.
Which functions ran is recorded by a profile hook, from outside the package."""
import sys
from pathlib import Path

import pytest

import train

PACKAGE = str(Path(__file__).resolve().parents[1] / "capsnet")
ALWAYS = {"CapsNet.forward", "DigitCapsules.forward", "Decoder.forward"}
PLAIN = {"dynamic": {"PrimaryCapsules.forward", "dynamic_routing"},
         "em": {"PrimaryCapsules.forward", "em_routing"}}
FAST = {"dynamic": {"conv1_primary", "procedure_1"}, "em": {"conv1_primary", "em_procedure"}}


def functions_run(args: list[str]) -> set[str]:
    """The qualified names of the package's functions that a train.py run called."""
    called: set[str] = set()

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            called.add(frame.f_code.co_qualname)
    sys.setprofile(hook)
    try:
        assert train.main(args) == 0
    finally:
        sys.setprofile(None)
    return called


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("routing", ["dynamic", "em"])
@pytest.mark.parametrize("fast", [True, False])
def test_the_run_executes_the_plain_forms_without_fast_kernels_and_the_fast_ones_with(
        fast, routing, precision, quick_args):
    called = functions_run(quick_args + ["--routing", routing, "--precision", precision,
                                         "--train-samples", "32", "--test-samples", "16",
                                         "--fast-kernels" if fast else "--no-fast-kernels"])
    ran, skipped = (FAST, PLAIN) if fast else (PLAIN, FAST)
    assert ALWAYS <= called
    assert ran[routing] <= called, ran[routing] - called
    assert not skipped[routing] & called, skipped[routing] & called
