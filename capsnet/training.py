"""The training loop: Trainer and Evaluator on torchnet's Engine, driven by small named hooks.
docs/implementation.md ("One training step, file by file") follows one step through the files.

One iteration of Trainer.fit, in torchnet's order (Engine.train):
  on_sample       stop if the processes agreed to (Ctrl-C, SIGTERM); start the step's clock
  zero_grad       optimizer.zero_grad()
  forward         forward_step: the network (its decoder masked by the labels) and the loss parts
  backward        loss.backward()
  on_forward      the batch counted into the meters on the device; every --log-every batches
                  they are fetched in one transfer, summed over processes, checked for a
                  non-finite loss, and the stop flag agreed
  step            optimizer.step()
  on_update       the learning-rate schedule steps; listeners get a Progress record
Around the batches: on_start_epoch (model.train(), the meters reset unless resumed mid-epoch, a
fresh progress bar) and on_end_epoch (the weights added to their average from --average-from on,
the validation and test passes of the weights tested (that average, else the trained ones), a
metrics.csv row, best.pt and last.pt, the epoch's line; listeners get an EpochEnd record). The
listeners (the dashboard) know the loop only by those records (capsnet.records).
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torchnet.engine import Engine
from tqdm import tqdm

from . import checkpoint as checkpoints
from . import microbatches
from .averaging import WeightAverage
from .checkpoint import Best, Position
from .run import interrupt
from .run.build import RunParts, build_run, check_dataset, check_structure
from .run.storage import load_state, save_checkpoint
from .errors import UserError
from .data.batches import Batches, Sample, head
from .meters import Meters, Totals, accuracy_text, align_reconstructions
from .records import SHOWCASE, EpochEnd, Listener, Progress, RunStart, Showcase
from .kernels import apply as apply_kernels
from .networks import MODELS, Ensemble

if TYPE_CHECKING:
    from .config import Config


Hook = Callable[[dict], None]


class Hooks(list):
    """Several functions behind one Engine hook, called in the order they subscribed."""

    def __call__(self, state: dict) -> None:
        for hook in self:
            hook(state)


def subscribe(engine: Any, event: str, hook: Hook) -> None:
    """Add `hook` to an Engine event (on_start, on_sample, on_forward, on_end_epoch, ...)."""
    engine.hooks.setdefault(event, Hooks()).append(hook)


class Step(NamedTuple):
    """What one forward pass hands to the on_forward hooks."""
    output: Any  # the network's CapsNetOutput (capsnet.model), BaselineOutput
    parts: Any  # the criterion's LossParts (capsnet.loss)


def forward_step(network: Callable[..., Any], criterion: nn.Module,
                 autocast: Callable[[], Any], train: bool, micro_batch: int = 0,
                 no_sync: Callable[[], Any] = contextlib.nullcontext
                 ) -> Callable[[Sample], tuple[Tensor, Step]]:
    """The Engine's network function: the decoder is masked by the labels in training, by the
    predicted classes (as many as the labels) at test, where each predicted digit's
    reconstruction is scored against the true digit of its class. With `micro_batch`, a larger
    batch is computed in parts of at most that many examples (`in_parts`)."""
    def step(sample: Sample) -> tuple[Tensor, Step]:
        images, labels, targets, weights = sample
        objects = labels.shape[1] if labels.dim() == 2 else 1
        with autocast():
            output = network(images, labels if train else None, objects)
            if objects > 1 and not train and output.reconstructions is not None:
                output = align_reconstructions(output, labels)
            parts = criterion.parts(targets, labels, output, weights)
        return parts.total, Step(output, parts)
    if not micro_batch:
        return step
    return in_parts(step, micro_batch, train, no_sync)


def in_parts(step: Callable[[Sample], tuple[Tensor, Step]], size: int, train: bool,
             no_sync: Callable[[], Any]) -> Callable[[Sample], tuple[Tensor, Step]]:
    """`step` over parts of at most `size` examples of a batch, which is the same step: each
    part's loss is its share of the batch's, L_p x W_p / W (its weighted mean times its weight
    total over the batch's), so the parts' losses, and their gradients, sum to the batch's. In
    training the parts before the last go backward here, under `no_sync` (DDP synchronises the
    gradients once, in the last part's backward, which the Engine runs on the loss returned:
    the last part's). The Step holds the parts' outputs joined and their loss parts summed: the
    batch's."""
    def parts(sample: Sample) -> tuple[Tensor, Step]:
        if len(sample.weights) <= size:
            return step(sample)
        total = sample.weights.sum().clamp_min(1.0)  # W, as the criterion's batch mean takes it
        pieces = microbatches.split(sample, size)
        outputs, losses = [], []
        for number, piece in enumerate(pieces):
            loss, done = step(piece)
            share = piece.weights.sum() / total  # W_p / W
            loss = loss * share
            if train and number < len(pieces) - 1:
                with no_sync():
                    loss.backward()
            outputs.append(done.output)
            losses.append(type(done.parts)(*(part.detach() * share for part in done.parts)))
        summed = type(losses[0])(*(sum(terms) for terms in zip(*losses)))
        return (loss if train else summed.total), Step(microbatches.joined(outputs), summed)
    return parts


def add_to_meters(meters: Meters, state: dict) -> None:
    sample: Sample = state["sample"]
    step: Step = state["output"]
    meters.add(step.output.scores, sample.labels, step.parts, sample.weights)


class Evaluator:
    """One pass over a test split through its own Engine (Engine.test), without gradients. Under
    torchrun each process tests its share and the counts are summed over all processes."""

    def __init__(self, parts: RunParts, batches: Batches | None = None,
                 name: str = "test") -> None:
        """A pass over `batches` (default: the test split's), `name` in its progress bar."""
        self.model, self.world, self.name = parts.model, parts.world, name
        self.batches = batches or parts.test_batches
        self.objects = parts.objects
        self.step = forward_step(parts.eval_network, parts.criterion, parts.autocast, train=False,
                                 micro_batch=parts.micro_batch)
        self.meters = Meters(len(parts.classes))
        self.confusion = np.zeros((len(parts.classes),) * 2, dtype=np.int64)  # rows: true class
        self.engine = Engine()
        if not self.world.distributed:  # processes stop together, at the trainer's checks
            subscribe(self.engine, "on_sample", interrupt.check)
        subscribe(self.engine, "on_forward", lambda state: add_to_meters(self.meters, state))

    def run(self) -> dict[str, float]:
        self.model.eval()
        self.meters.reset()
        bar = tqdm(self.batches, desc=self.name, unit="batch", leave=False, dynamic_ncols=True,
                   disable=not self.world.main)
        try:
            with torch.inference_mode():
                self.engine.test(self.step, bar)
        finally:
            bar.close()
        totals = Totals.of(self.world.sum(self.meters.totals().vector()))
        self.confusion = totals.confusion.round().long().numpy()
        return totals.summary(self.objects)


class Diverged(UserError):
    """The loss became non-finite: training stops without saving the damaged weights."""


class Trainer:
    """Model, optimiser, data and run directory of one training run, on torchnet's Engine; its
    position and checkpoints: capsnet.checkpoint.

    Under torchrun every process runs a Trainer on its share of each batch; the meters are summed
    over the processes at every logging interval, where the processes also agree on stopping
    (an interrupt or a divergence), and rank 0 alone writes and prints.
    """

    def __init__(self, cfg: Config, run: Any, checkpoint: dict | None = None,
                 source: Path | None = None, allow_other_dataset: bool = False,
                 command: str | None = None) -> None:
        self.cfg, self.run = cfg, run
        # The train.py commands that made the run, kept in its checkpoints (capsnet.weights
        # records them); None once resumed from a checkpoint that does not keep them.
        self.commands: list[str] | None = [command] if command else []
        if checkpoint is not None:  # before any data is read or downloaded
            check_dataset(checkpoint, cfg, allow=allow_other_dataset)
        self.parts = parts = build_run(cfg)
        self.world, self.distributed = parts.world, parts.world.distributed
        self.device, self.model, self.network = parts.device, parts.model, parts.train_network
        self.autocast, self.criterion = parts.autocast, parts.criterion
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.generator, self.classes = parts.generator, parts.classes
        self.train_batches, self.objects = parts.train_batches, parts.objects
        self.evaluator = Evaluator(parts)
        self.validator = (Evaluator(parts, parts.validation_batches, "validation")
                          if parts.validation_batches is not None else None)
        self.meters = Meters(len(self.classes))
        self.running = self.meters.totals()  # this epoch's totals over all processes, so far
        self.average = WeightAverage(self.model, cfg.average_from)
        self.position, self.best = Position(), Best()
        self.epoch_rng = self.generator.get_state()  # the data generator at the epoch's start
        self.stopping = False  # all processes agreed to stop at the next batch
        self.step_seconds = 0.0  # this epoch's time in training steps (forward, backward, update)
        self.step_started = 0.0
        self.good: tuple[Path, str] | None = None  # the newest checkpoint known to be good
        self.notes: list[str] = []  # what a resume changed, for the run's first line
        if checkpoint is not None:
            check_dataset(checkpoint, cfg, self.classes, allow_other_dataset)
            checkpoints.check_resume(checkpoint, cfg, self.world.size)
            self.position, self.best = checkpoints.restore(checkpoint, parts, self.average,
                                                           self.meters)
            self.epoch_rng = checkpoint["data_rng"]
            earlier = checkpoint.get("commands")
            self.commands = None if earlier is None else [*earlier, *self.commands]
            self.good = (source or run.last, self.where())
            notes = (checkpoints.apply_schedule(checkpoint["config"], parts, self.position.step),
                     checkpoints.micro_batch_note(checkpoint["config"], cfg))
            self.notes += [note for note in notes if note]
        self.bar: tqdm | None = None
        self.listeners: list[Listener] = []  # told of progress in records (capsnet.records)
        self.engine = Engine()
        for event, hook in (("on_start", self.on_start), ("on_start_epoch", self.on_start_epoch),
                            ("on_sample", self.on_sample), ("on_forward", self.on_forward),
                            ("on_update", self.on_update), ("on_end_epoch", self.on_end_epoch),
                            ("on_end", lambda state: [k.close() for k in self.listeners])):
            subscribe(self.engine, event, hook)

    def run_start(self) -> RunStart:
        """What a listener starts from: the showcase, and a resumed run's history."""
        showcase = Showcase(self.model, self.autocast, head(self.evaluator.batches, SHOWCASE),
                            self.classes, self.objects, self.parts.capsules,
                            self.parts.micro_batch)
        position = self.position
        history = [row for row in self.run.read_metrics() if int(row["epoch"]) <= position.epoch]
        resumed = position.epoch + position.batch / len(self.train_batches) if history else None
        return RunStart(showcase, history, resumed)

    def progress(self) -> Progress:
        return Progress(self.position.epoch, self.position.batch, len(self.train_batches),
                        self.running,
                        self.step_seconds, self.optimizer.param_groups[0]["lr"])

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def train_images(self) -> int:
        """Training images in an epoch, over all processes."""
        return len(self.train_batches.split)

    def fit(self) -> None:
        """Train up to cfg.epochs. Ctrl-C or SIGTERM stops after the current batch, saves
        last.pt and re-raises KeyboardInterrupt. A failed write or a divergence raises a
        UserError that names the newest good checkpoint."""
        step = forward_step(self.network, self.criterion, self.autocast, train=True,
                            micro_batch=self.parts.micro_batch, no_sync=self.parts.no_sync)
        try:
            with interrupt.deferred():
                try:
                    self.engine.train(step, self.train_batches, self.cfg.epochs, self.optimizer)
                except KeyboardInterrupt:
                    self.close_bar()
                    self.save(self.run.last)
                    raise
        except UserError as error:  # a failed write (WriteError), Diverged
            self.close_bar()
            raise type(error)(f"{error}; {self.resume_hint()}") from None

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def say(self, line: str) -> None:
        if self.world.main:
            tqdm.write(line)

    def where(self) -> str:
        """The run's position in words."""
        return self.position.where(len(self.train_batches))

    def resume_hint(self) -> str:
        if self.good is None:
            return "no checkpoint of this run was written"
        path, where = self.good
        return f"the last good checkpoint is {path} ({where}); continue with: " \
               f"python train.py --resume {path}"

    def on_start(self, state: dict) -> None:
        state["epoch"], state["t"] = self.position.epoch, self.position.step  # as resumed

    def on_start_epoch(self, state: dict) -> None:
        self.model.train()
        if self.position.batch == 0:  # a new epoch; a resumed one keeps its restored meters
            self.epoch_rng = self.generator.get_state()
            self.meters.reset()
        self.running = Totals.of(self.world.sum(self.meters.totals().vector()))
        self.first_batch, self.step_seconds = self.position.batch, 0.0
        self.epoch_started = time.perf_counter()
        # A fresh bar over the base batches each epoch: never a wrapper of last epoch's wrapper.
        self.bar = tqdm(self.train_batches.starting_at(self.position.batch),
                        total=len(self.train_batches), initial=self.position.batch,
                        desc=f"epoch {state['epoch'] + 1}/{state['maxepoch']}",
                        unit="batch", leave=False, dynamic_ncols=True, disable=not self.world.main)
        state["iterator"] = self.bar
        for listener in self.listeners:
            listener.on_start_epoch(self.progress())

    def on_sample(self, state: dict) -> None:
        """Stop between batches: on Ctrl-C or SIGTERM (capsnet.run.interrupt) when alone, when
        all processes agreed to (at the logging batches) under torchrun."""
        if self.stopping or (interrupt.requested and not self.distributed):
            raise KeyboardInterrupt
        self.step_started = time.perf_counter()

    def logs_after(self, done: int) -> bool:
        """Whether the meters are brought up to date after `done` batches of an epoch."""
        return done % self.cfg.log_every == 0 or (self.cfg.visdom
                                                   and done % self.cfg.visdom_every == 0)

    def on_forward(self, state: dict) -> None:
        add_to_meters(self.meters, state)
        if self.logs_after(self.position.batch + 1):
            self.flush_meters(in_batch=True)
            summary = self.running.summary(self.objects)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{summary['loss']:.4f}",
                                     acc=f"{summary['accuracy']:.2f}%", refresh=False)

    def flush_meters(self, in_batch: bool = False) -> None:
        """Add the queued batches to the meters and sum them over the processes (which also
        agree on stopping); raise Diverged if any loss is not finite.
        `in_batch`: called between a batch's forward pass and its update."""
        queued = len(self.meters.pending)
        bad = self.meters.flush()
        stop = float(bool(interrupt.requested))
        summed = self.world.sum(torch.cat([self.meters.totals().vector(), torch.tensor([stop])]))
        self.running = Totals.of(summed[:-1])
        self.stopping = self.stopping or bool(summed[-1] > 0)
        if bad is not None or not self.running.finite():
            first = int(in_batch) - queued + 1 + (bad if bad is not None else queued - 1)
            at = self.position
            raise Diverged(f"training diverged: the loss is not finite at epoch {at.epoch + 1}, "
                           f"batch {at.batch + first} (step {at.step + first}), and nothing was "
                           "saved from then on (a lower --lr may help)")

    def on_update(self, state: dict) -> None:
        self.step_seconds += time.perf_counter() - self.step_started
        self.scheduler.step()
        self.position.step = state["t"] + 1
        self.position.batch += 1
        for listener in self.listeners:
            listener.on_progress(self.progress())

    def on_end_epoch(self, state: dict) -> None:
        self.bar.close()
        train_seconds = time.perf_counter() - self.epoch_started
        trained = (self.position.batch - self.first_batch) * self.cfg.batch_size * self.world.size
        lr = self.optimizer.param_groups[0]["lr"]
        self.flush_meters()
        train = self.running.summary(self.objects)
        self.average.add(state["epoch"])
        with self.average.applied():
            validation = self.validator.run() if self.validator else None
            test = self.evaluator.run()
        self.position.epoch, self.position.batch = state["epoch"], 0
        self.epoch_rng = self.generator.get_state()
        averaged = self.average.epochs
        row = {"epoch": self.position.epoch, "lr": lr,
               "train_images_per_s": min(trained, self.train_images) / train_seconds,
               "seconds": time.perf_counter() - self.epoch_started,
               "averaged_epochs": averaged.count if averaged else 0}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"test_{k}": v for k, v in test.items()})
        row.update({f"validation_{k}": v for k, v in (validation or {}).items()})
        selected = (validation or test)["accuracy"]  # best.pt: on validation when held out
        best = selected > self.best.accuracy
        if best:
            self.best = Best(selected, self.position.epoch, test["accuracy"])
        if self.world.main:
            self.run.append_metrics(row)
        # best.pt before last.pt: last.pt never points past a best.pt not written
        self.save(*([self.run.best] if best else []), self.run.last)
        state["metrics"] = row
        held_out = (f"validation loss {validation['loss']:.4f} {accuracy_text(validation)}  "
                    if validation else "")
        self.say(f"epoch {self.position.epoch}/{state['maxepoch']}  "
                 f"train loss {train['loss']:.4f} {accuracy_text(train)}  {held_out}"
                 f"test loss {test['loss']:.4f} {accuracy_text(test)}{' *' if best else ''}  "
                 f"lr {lr:.2e}  {row['seconds']:.1f}s ({row['train_images_per_s']:.0f} img/s)"
                 + (f"  (tested: {averaged.describe()})" if averaged else ""))
        target = self.cfg.stop_at_accuracy
        if target and selected >= target:
            state["maxepoch"] = self.position.epoch  # the Engine's loop ends after this epoch
            self.say(f"stopped: {self.selection} accuracy {selected:.2f}% reached "
                     f"--stop-at-accuracy {target:g} at epoch {self.position.epoch}")
        with self.average.applied():  # the figures show the weights tested
            for listener in self.listeners:
                listener.on_epoch(EpochEnd(self.position.epoch, row, self.evaluator.confusion))

    @property
    def selection(self) -> str:
        """What best.pt and --stop-at-accuracy are chosen on."""
        return "validation" if self.validator else "test"

    def save(self, path: Path, *more: Path) -> None:
        """Write a checkpoint of the current position to `path`, then `more` (rank 0; every
        process takes part); never one with non-finite weights."""
        self.flush_meters()
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise Diverged(f"training diverged: the weights are not finite at {self.where()}, "
                           f"so they were not saved to {path.name}")
        meters = self.world.gather(self.meters.state_dict())  # each process's share of the epoch
        if self.world.main:
            save_checkpoint(path, checkpoints.contents(self.parts, self.position, self.best,
                                                       self.average, meters, self.epoch_rng,
                                                       self.commands), *more)
        self.good = ((path, *more)[-1], self.where())


def evaluate_checkpoints(cfg: Config, checkpoints: list[dict], allow_other_dataset: bool = False
                         ) -> tuple[dict[str, float], Any, tuple[str, ...], str]:
    """Test-set loss and accuracy, confusion matrix (rows: true class), class names and what
    was tested (in words) of one checkpoint, or of several of one shape averaged (an ensemble)."""
    for checkpoint in checkpoints:  # before any data is read or downloaded
        check_dataset(checkpoint, cfg, allow=allow_other_dataset)
    parts = build_run(cfg, train=False)
    if parts.world.main:
        for line in parts.kernels.warnings("testing", "pass --no-fast-kernels to silence this"):
            print(line, file=sys.stderr, flush=True)
    members = []
    for checkpoint in checkpoints:
        check_dataset(checkpoint, cfg, parts.classes, allow_other_dataset)
        check_structure(checkpoint["model_args"], parts.model_args, cfg.model)
        member = MODELS[cfg.model].build(checkpoint["model_args"], cfg).to(parts.device)
        apply_kernels(member, parts.kernels.record())  # its structure is the run's: checked
        load_state(member, checkpoint["model"], "model")
        members.append(member)
    model = members[0] if len(members) == 1 else Ensemble(members)
    evaluator = Evaluator(dataclasses.replace(parts, model=model, eval_network=model))
    summary = evaluator.run()
    return summary, evaluator.confusion, parts.classes, parts.test_batches.describe()
