"""The code you read is the code that trains: a training step of a run with --no-fast-kernels
executes the layers as written in capsnet/model.py and capsnet/routing (and never the fast forms);
a training step of the default run executes the fast forms, which the run checked equal to those
(and never the plain ones); both run the model's own forward methods; one training step runs
through the few files docs/implementation.md names. Which functions ran is recorded by a profile
hook, from outside the package."""
import sys
from pathlib import Path

import pytest

import train
from capsnet import training

PACKAGE = str(Path(__file__).resolve().parents[1] / "capsnet")
ALWAYS = {"CapsNet.forward", "DigitCapsules.forward", "Decoder.forward"}
PLAIN = {"dynamic": {"PrimaryCapsules.forward", "dynamic_routing"},
         "em": {"PrimaryCapsules.forward", "em_routing"}}
FAST = {"dynamic": {"conv1_primary", "procedure_1"}, "em": {"conv1_primary", "em_procedure"}}


def in_steps(monkeypatch: pytest.MonkeyPatch, hook, batch: int | None = None) -> None:
    """Profile with `hook` from the start of each training batch (or of the one numbered
    `batch` in its epoch) to the end of its update."""
    on_sample, on_update = training.Trainer.on_sample, training.Trainer.on_update

    def sample(self, state):
        if batch is None or self.position.batch == batch:
            sys.setprofile(hook)
        on_sample(self, state)

    def update(self, state):
        on_update(self, state)
        sys.setprofile(None)
    monkeypatch.setattr(training.Trainer, "on_sample", sample)
    monkeypatch.setattr(training.Trainer, "on_update", update)


def functions_run(args: list[str], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The qualified names of the package's functions that a train.py run's training steps
    called."""
    called: set[str] = set()

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            called.add(frame.f_code.co_qualname)
    in_steps(monkeypatch, hook)
    try:
        assert train.main(args) == 0
    finally:
        sys.setprofile(None)
    return called


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("routing", ["dynamic", "em"])
@pytest.mark.parametrize("fast", [True, False])
def test_the_steps_execute_the_plain_forms_without_fast_kernels_and_the_fast_ones_with(
        fast, routing, precision, quick_args, monkeypatch):
    called = functions_run(quick_args + ["--routing", routing, "--precision", precision,
                                         "--train-samples", "32", "--test-samples", "16",
                                         "--fast-kernels" if fast else "--no-fast-kernels"],
                           monkeypatch)
    ran, skipped = (FAST, PLAIN) if fast else (PLAIN, FAST)
    assert ALWAYS <= called
    assert ran[routing] <= called, ran[routing] - called
    assert not skipped[routing] & called, skipped[routing] & called


STEP_FILES = ["training.py", "model.py", "spectral.py", "squashing.py", "routing/dynamic.py",
              "loss.py", "meters.py"]  # docs/implementation.md, in this order


def test_one_training_step_runs_through_the_files_the_docs_name_in_order(quick_args, monkeypatch):
    """From the start of the second batch to the end of its update (a batch that is not a
    logging batch), every file of the package entered, in the order first entered."""
    entered: list[str] = []

    def hook(frame, event, arg):
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(PACKAGE):
            relative = Path(name).relative_to(PACKAGE).as_posix()
            if relative not in entered:
                entered.append(relative)
    in_steps(monkeypatch, hook, batch=1)
    assert train.main(quick_args + ["--log-every", "50"]) == 0
    assert entered == STEP_FILES
    docs = (Path(PACKAGE).parent / "docs" / "implementation.md").read_text()
    section = docs[docs.index("## One training step"):docs.index("## Layout")]
    places = [section.index(f"`capsnet/{name}`") for name in STEP_FILES]
    assert places == sorted(places)
