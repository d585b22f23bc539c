"""--micro-batch: a batch computed in parts is the same step as the whole batch: the same loss,
meters and weights after the update, for every routing, two-digit targets and the baseline."""
import contextlib
import copy

import pytest
import torch
from torchnet.engine import Engine

from capsnet.config import Config
from capsnet.data.batches import Sample
from capsnet.microbatches import part_size, slices
from capsnet.networks import MODELS
from capsnet.routing import ROUTINGS
from capsnet.run.recipe import configure_precision, make_optimizer
from capsnet.training import forward_step

TINY = {"conv1_channels": 8, "primary_types": 2, "class_dim": 8}


def test_parts_are_as_few_and_as_even_as_the_room_allows():
    assert part_size(128, 20) == 19  # 7 parts: 6 of 19 and one of 14, not 6 of 20 and one of 8
    assert part_size(128, 128) == 128 and part_size(128, 500) == 128
    assert part_size(128, 1) == 1 and part_size(7, 3) == 3
    assert slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]


def a_batch(objects: int, dtype: torch.dtype, size: int = 7) -> Sample:
    """Random images and labels, the last two examples weighted 0 (a pass's filling); with two
    objects, each digit's own target as MultiMNIST has."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(size, 1, 28, 28, generator=generator, dtype=dtype)
    weights = torch.ones(size, dtype=dtype)
    weights[-2:] = 0
    if objects == 1:
        labels = torch.randint(0, 10, (size,), generator=generator)
        return Sample(images, labels, images, weights)
    labels = torch.stack([torch.randperm(10, generator=generator)[:2] for _ in range(size)])
    targets = torch.rand(size, 2, 1, 28, 28, generator=generator, dtype=dtype)
    return Sample(images, labels.sort(dim=1).values, targets, weights)


def one_step(model: torch.nn.Module, cfg: Config, sample: Sample, micro_batch: int,
             precision: str = "fp32") -> tuple[torch.nn.Module, dict]:
    """One training step through torchnet's Engine, as the Trainer takes it; the on_forward
    hook's Step and the model after the update."""
    model = copy.deepcopy(model)
    optimizer, _ = make_optimizer(model, cfg)
    criterion = MODELS[cfg.model].criterion(cfg, lambda: 0.3)
    step = forward_step(model, criterion, configure_precision(precision, torch.device("cpu")),
                        True, micro_batch)
    seen = {}
    engine = Engine()
    engine.hooks["on_forward"] = lambda state: seen.update(step=state["output"])
    engine.train(step, [sample], 1, optimizer)
    return model, seen["step"]


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_same_step(cfg: Config, objects: int, dtype: torch.dtype, rel: float,
                     precision: str = "fp32") -> None:
    torch.manual_seed(0)
    args = {"in_channels": 1, "image_size": 28, "num_classes": 10,
            **MODELS[cfg.model].args(cfg, objects)}
    model = MODELS[cfg.model].build(args, cfg).to(dtype)
    sample = a_batch(objects, dtype)
    whole, step = one_step(model, cfg, sample, 0, precision)
    parts, in_parts = one_step(model, cfg, sample, 3, precision)  # 3, 3 and 1 examples
    assert not torch.equal(flat(whole), flat(model))  # the step moved the weights
    assert (flat(parts) - flat(whole)).abs().max() <= rel * flat(whole).abs().max()
    for a, b in zip(in_parts.parts, step.parts):
        assert a.item() == pytest.approx(b.item(), rel=rel)
    torch.testing.assert_close(in_parts.output.scores, step.output.scores.detach(),
                               rtol=rel, atol=rel)


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_one_step_in_micro_batches_gives_the_whole_batchs_weights_in_float64(routing):
    loss = {"score_loss": "cross-entropy"} if routing == "attention" else {}
    assert_same_step(Config(**TINY, routing=routing, **loss), 1, torch.float64, 1e-10)


@pytest.mark.parametrize("settings, rel", [
    ({"model": "capsnet"}, 1e-10),
    # its loss takes the logits in float32 (as under autocast): float32's rounding
    ({"model": "baseline", "dropout": 0.0, "baseline_channels": "8,8", "baseline_hidden": "16"},
     1e-6)])
def test_two_digit_targets_and_the_baseline_step_the_same_in_parts(settings, rel):
    assert_same_step(Config(**TINY, **settings), 2, torch.float64, rel)


def test_in_float32_the_parts_agree_to_float32s_rounding():
    assert_same_step(Config(**TINY), 1, torch.float32, 1e-5)


def test_in_bfloat16_the_parts_are_no_further_from_the_whole_than_bfloat16_is_from_float32():
    """bfloat16 keeps 8 bits: a small gradient may change sign with the order of a sum, and
    Adam's first step then moves its weight the other way (up to 2 x lr apart)."""
    cfg = Config(**TINY)
    torch.manual_seed(0)
    model = MODELS["capsnet"].build({"in_channels": 1, "image_size": 28, "num_classes": 10,
                                     **MODELS["capsnet"].args(cfg, 1)}, cfg)
    sample = a_batch(1, torch.float32)
    whole, step = one_step(model, cfg, sample, 0, "bf16")
    parts, in_parts = one_step(model, cfg, sample, 3, "bf16")
    fp32, _ = one_step(model, cfg, sample, 0, "fp32")
    apart = (flat(parts) - flat(whole)).abs()
    assert apart.max() <= 2 * cfg.lr
    assert apart.mean() <= (flat(fp32) - flat(whole)).abs().mean()
    for a, b in zip(in_parts.parts, step.parts):
        assert a.item() == pytest.approx(b.item(), rel=1e-2)


def test_evaluation_in_parts_gives_the_whole_batchs_outputs_and_loss():
    cfg = Config(**TINY)
    torch.manual_seed(0)
    args = {"in_channels": 1, "image_size": 28, "num_classes": 10, **MODELS["capsnet"].args(cfg, 2)}
    model = MODELS["capsnet"].build(args, cfg).double().eval()
    criterion = MODELS["capsnet"].criterion(cfg, lambda: 1.0)
    sample = a_batch(2, torch.float64)
    with torch.inference_mode():
        loss, whole = forward_step(model, criterion, contextlib.nullcontext, False)(sample)
        total, parts = forward_step(model, criterion, contextlib.nullcontext, False, 2)(sample)
    assert total.item() == pytest.approx(loss.item(), rel=1e-12)
    for a, b in zip(parts.output, whole.output):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_only_the_last_parts_backward_synchronises():
    """Under torchrun, DDP's no_sync keeps the earlier parts' gradients local: the step
    synchronises once, in the last part's backward (which the Engine runs)."""
    cfg = Config(**TINY)
    args = {"in_channels": 1, "image_size": 28, "num_classes": 10, **MODELS["capsnet"].args(cfg, 1)}
    model = MODELS["capsnet"].build(args, cfg)
    local: list[bool] = []
    inside = [False]

    @contextlib.contextmanager
    def no_sync():
        inside[0] = True
        yield
        inside[0] = False
    model.conv1.bias.register_hook(lambda grad: local.append(inside[0]))
    step = forward_step(model, MODELS["capsnet"].criterion(cfg, lambda: 0.0),
                        contextlib.nullcontext, True, 3, no_sync)
    loss, _ = step(a_batch(1, torch.float32))
    loss.backward()  # the Engine's
    assert local == [True, True, False]
