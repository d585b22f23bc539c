"""The CUDA path proven on a machine without a GPU.

- FakeTensorMode makes tensors that say device="cuda" and hold no data; it raises
  FakeTensorDeviceMismatchError where a CPU tensor meets a CUDA one. Data-dependent calls
  (.item(), nonzero, trunc_normal_) raise under it too, so models are built on the CPU and moved,
  and what a pass draws on the host (its order and partners: Batches.plan) is drawn outside the
  mode and served under it. torch.autocast("cuda") turns itself off without CUDA, so bf16 is
  switched on with set_autocast_enabled. Backward needs a real CUDA context: tests/test_cuda.py.
- A TorchDispatchMode counts the calls that wait for the device: _local_scalar_dense (which
  .item() and bool(tensor) reach) and device-to-host copies.
- torch.compile on the nn.Conv2d path that CUDA takes (spectral.supported is false for CUDA
  images: patched here for CPU ones): one graph, and compiled training steps equal eager ones
  (the aot_eager backend: no inductor in the suite).
"""
import copy
from collections import Counter

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

from capsnet import spectral
from capsnet.run.build import model_args
from capsnet.data.records import Split
from capsnet.data.batches import Batches
from capsnet.data import affine
from capsnet.data.canvas import CanvasBatches
from capsnet.loss import CapsuleLoss
from capsnet.meters import Meters
from capsnet.model import CapsNet
from capsnet.networks import MODELS
from capsnet.routing import ROUTINGS
from capsnet.config import PRESETS, Config
from conftest import SMALL_SETTINGS as SMALL  # quick, the same code paths

aten = torch.ops.aten
CUDA = torch.device("cuda")


class Syncs(TorchDispatchMode):
    """Counts the calls that wait for the device. Under fake tensors, a read of a value gets 0
    and a copy to the host gets zeros, so that the code goes on to be counted."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.tags: list = []  # the value of `tag` at each call
        self.tag = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            self.calls.append("value read")
            self.tags.append(self.tag)
            if isinstance(args[0], torch._subclasses.FakeTensor):
                with unset_fake_temporarily():
                    return 0
        if (func is aten._to_copy.default and args[0].device.type == "cuda"
                and torch.device(kwargs.get("device") or args[0].device).type == "cpu"):
            self.calls.append("copy to host")
            self.tags.append(self.tag)
            with unset_fake_temporarily():
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        return func(*args, **kwargs)


def fake_cuda() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=True)


def bf16_autocast(enabled: bool) -> None:
    torch.set_autocast_enabled("cuda", enabled)
    torch.set_autocast_dtype("cuda", torch.bfloat16)


def digits(count: int, shape: tuple[int, int, int] = (1, 28, 28)) -> Split:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 255, (count, *shape), generator=g, dtype=torch.uint8)
    return Split(images, torch.arange(count) % 10, tuple("0123456789"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("recipe,routing", [("paper", "dynamic"), ("official", "dynamic"),
                                            ("paper", "self-attention"), ("paper", "uniform"),
                                            ("paper", "attention"), ("paper", "em")])
@pytest.mark.parametrize("preset", [None, "cifar10"])
def test_training_and_test_forward_passes_stay_on_cuda(preset, recipe, routing, precision):
    leaky = {"leaky_routing": False} if routing != "dynamic" else {}  # cifar10's is dynamic's
    settings = {**PRESETS.get(preset, {}), "recipe": recipe, "routing": routing, **leaky, **SMALL}
    cfg = Config(**settings)
    shape = (3, 32, 32) if preset else (1, 28, 28)
    args = model_args(cfg, digits(1, shape))
    model = MODELS["capsnet"].make(**args)  # on the CPU: the official init draws data-dependent
    # values
    criterion = MODELS[cfg.model].criterion(cfg, lambda: 0.5)
    size = args["image_size"]
    with fake_cuda():
        model = model.to(CUDA)
        images = torch.rand(4, shape[0], size, size, device=CUDA)
        labels = torch.tensor([0, 3, 5, 9], device=CUDA)
        weights = torch.ones(4, device=CUDA)
        bf16_autocast(precision == "bf16")
        try:
            trained = model(images, labels)
            parts = criterion.parts(images, labels, trained, weights)
            with torch.inference_mode():
                tested = model(images)
                tested_parts = criterion.parts(images, labels, tested, weights)
        finally:
            bf16_autocast(False)
    for tensor in (*trained[:3], *parts, *tested[:3], *tested_parts):
        assert tensor.device.type == "cuda"
    assert trained.poses.dtype == torch.float32  # routing in float32 always
    assert trained.reconstructions.dtype == (torch.bfloat16 if precision == "bf16"
                                             else torch.float32)
    with fake_cuda(), pytest.raises(RuntimeError, match="device"):
        model(torch.rand(4, shape[0], size, size), labels.cpu())  # a CPU batch is refused


@pytest.mark.parametrize("kind", ["shift", "crop", "mnist40", "multimnist"])
def test_batches_are_made_on_cuda(kind):
    split = digits(40)

    def batches(source: Split) -> Batches:
        g = torch.Generator().manual_seed(0)
        if kind in ("mnist40", "multimnist"):
            canvas, objects = (40, 1) if kind == "mnist40" else (36, 2)
            return CanvasBatches(source, 16, canvas, objects, shuffle=True, generator=g)
        return Batches(source, 16, shuffle=True, generator=g,
                       shift=2 if kind == "shift" else 0, crop=24 if kind == "crop" else 0)
    host = batches(split)
    plan = host.plan()  # a pass drawn on the host, outside the mode
    with fake_cuda():
        samples = list(host.to(CUDA).serve_plan(plan))
    assert len(samples) == 3
    for sample in samples:
        assert all(part.device.type == "cuda" for part in sample)
        assert sample.images.shape[0] == 16  # one shape for every batch


def test_the_affine_stand_in_is_made_on_cuda():
    with fake_cuda():
        made = affine.make(digits(12).to(CUDA))
    assert made.images.device.type == "cuda" and made.images.shape == (12, 1, 40, 40)


def test_a_training_batch_waits_for_nothing_on_cuda_and_a_logging_flush_once():
    """Forward, loss and the meters' per-batch update of three batches: no value read and no
    copy to the host. The flush at a logging batch: one copy to the host."""
    split = digits(40)
    host = Batches(split, 16, shuffle=True, shift=2, generator=torch.Generator().manual_seed(0))
    model, criterion = MODELS["capsnet"].make(**SMALL), CapsuleLoss()
    plan = host.plan()
    with fake_cuda():
        model = model.to(CUDA)
        device = host.to(CUDA)
        meters = Meters(10)
        with Syncs() as syncs:
            for sample in device.serve_plan(plan):
                output = model(sample.images, sample.labels)
                parts = criterion.parts(sample.targets, sample.labels, output, sample.weights)
                meters.add(output.scores, sample.labels, parts, sample.weights)
            in_batches = list(syncs.calls)
            meters.fetch()
        assert in_batches == []
        assert syncs.calls == ["copy to host"]


def test_the_cpu_training_loop_reads_values_only_where_cuda_does_not(data_root, tmp_path):
    """The whole Trainer on real CPU tensors (backward and Adam included). On the CPU, F.one_hot
    checks its range with two value reads, which CUDA skips: 2 x 2 per batch (the margin loss's
    and the decoder mask's one_hot). A logging batch adds 1 read of a CPU tensor (the agreed stop
    flag; the summed totals come back as one list); on the CPU, .cpu() of a CPU tensor dispatches
    nothing, so the one copy of a CUDA flush does not show here."""
    from capsnet.training import subscribe
    from capsnet.run.rundir import RunDir
    from capsnet.training import Trainer
    cfg = Config(data_dir=str(data_root), download=False, epochs=1, batch_size=8, visdom=False,
                 log_every=4, test_samples=8, run_dir=str(tmp_path / "run"), **SMALL)
    trainer = Trainer(cfg, RunDir.create(cfg.run_dir))
    syncs = Syncs()
    subscribe(trainer.engine, "on_sample", lambda state: setattr(syncs, "tag", trainer.position.batch))
    subscribe(trainer.engine, "on_update", lambda state: setattr(syncs, "tag", None))
    with syncs:
        trainer.fit()
    per_batch = Counter(b for b in syncs.tags if b is not None)
    logging = {3, 7, 11}  # after batches 4, 8 and 12 (--log-every 4)
    assert sorted(per_batch) == list(range(12))
    for batch, count in per_batch.items():
        assert count == (5 if batch in logging else 4), (batch, count)


def training_step(model: CapsNet, criterion: CapsuleLoss):
    def step(images, labels, weights):
        return criterion.parts(images, labels, model(images, labels), weights).total
    return step


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_the_training_step_compiles_to_one_graph_on_the_cuda_path(routing, monkeypatch):
    torch.manual_seed(0)
    step = training_step(MODELS["capsnet"].make(**SMALL, routing=routing), CapsuleLoss())
    images, labels, weights = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), torch.ones(4)
    monkeypatch.setattr(spectral, "supported", lambda images: False)  # as for CUDA images
    explained = torch._dynamo.explain(step)(images, labels, weights)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, \
        explained.break_reasons


def test_compiled_training_steps_equal_eager_ones(monkeypatch):
    torch.manual_seed(0)
    base, criterion = MODELS["capsnet"].make(**SMALL), CapsuleLoss()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                torch.tensor([1.0, 1.0, 1.0, 0.0])) for _ in range(3)]

    def train(model: CapsNet, compiled: bool) -> list[float]:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = training_step(model, criterion)
        if compiled:
            step = torch.compile(step, backend="aot_eager", fullgraph=True)
        losses = []
        for batch in batches:
            optimizer.zero_grad()
            loss = step(*batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses
    monkeypatch.setattr(spectral, "supported", lambda images: False)  # as for CUDA images
    eager, compiled = copy.deepcopy(base), copy.deepcopy(base)
    assert train(eager, False) == pytest.approx(train(compiled, True), rel=1e-6)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_compile_mode_reaches_torch_compile(monkeypatch):
    from capsnet.run import recipe
    from capsnet.errors import UserError
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    for mode, given in (("default", None), ("reduce-overhead", "reduce-overhead"),
                        ("max-autotune", "max-autotune")):
        recipe.compile_model(CapsNet(**SMALL), True, mode)
        assert modes[-1] == given
    with pytest.raises(UserError, match="--compile-mode 'fast' is not allowed"):
        Config(compile_mode="fast")


def test_deterministic_turns_cudnn_benchmark_off_and_asks_for_deterministic_kernels(monkeypatch):
    """configure_precision for a CUDA device, without one: what --deterministic sets."""
    from capsnet.run import recipe
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda")
    try:
        recipe.configure_precision("fp32", cuda)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
        recipe.configure_precision("fp32", cuda, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's deterministic mode
        built = Config(deterministic=True, device="cpu")
        assert built.deterministic  # a flag: --deterministic
    finally:
        recipe.configure_precision("fp32", torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled()
