"""CUDA paths against the CPU: run on a machine with a GPU (`make device-check` on the device)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from capsnet.networks import MODELS
from capsnet.run.recipe import configure_precision
from capsnet.run.storage import load_checkpoint
from capsnet.data.splits import load_split
from capsnet.data.batches import Batches
from capsnet.model import CapsNet
from capsnet.config import Config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[1]


def pair(seed: int = 0, **kwargs) -> tuple[CapsNet, CapsNet]:
    """The same weights on the CPU and on the GPU."""
    torch.manual_seed(seed)
    cpu = CapsNet(**kwargs)
    gpu = CapsNet(**kwargs).cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def loss_and_grads(model: CapsNet, images: torch.Tensor, labels: torch.Tensor,
                   autocast=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    with autocast() if autocast else torch.autocast("cuda", enabled=False):
        output = model(images, labels)
        loss = MODELS['capsnet'].criterion(Config(), lambda: 0.0).parts(images, labels, output).total
    loss.backward()
    return output.scores.detach().float().cpu(), [p.grad.float().cpu() for p in model.parameters()]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_cudnn_path_matches_the_cpu_path(batch):
    """fp32 without TF32: the same function, so outputs and gradients agree to float32
    rounding (1e-4 relative over the whole gradient, summed over 16 images)."""
    configure_precision("fp32", torch.device("cuda"))
    cpu, gpu = pair()
    images, labels = batch
    lengths_cpu, grads_cpu = loss_and_grads(cpu, images, labels)
    lengths_gpu, grads_gpu = loss_and_grads(gpu, images.cuda(), labels.cuda())
    assert torch.allclose(lengths_gpu, lengths_cpu, atol=1e-5)
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        assert relative(g_gpu, g_cpu) < 1e-4


def test_bf16_autocast_stays_close_and_routes_in_float32(batch):
    """bf16 keeps 8 bits of mantissa: capsule lengths within 0.02 of fp32, gradients within 5%."""
    cpu, gpu = pair()
    images, labels = batch
    lengths_fp32, grads_fp32 = loss_and_grads(gpu, images.cuda(), labels.cuda())
    autocast = configure_precision("bf16", torch.device("cuda"))
    lengths_bf16, grads_bf16 = loss_and_grads(gpu, images.cuda(), labels.cuda(), autocast)
    assert (lengths_bf16 - lengths_fp32).abs().max() < 0.02
    for g_bf16, g_fp32 in zip(grads_bf16, grads_fp32):
        assert relative(g_bf16, g_fp32) < 0.05
    with autocast():
        poses, coupling = gpu.digits(gpu.primary(F.relu(gpu.conv1(images.cuda()))))
    assert poses.dtype == coupling.dtype == torch.float32
    configure_precision("fp32", torch.device("cuda"))


def test_compile_gives_the_eager_outputs(batch):
    _, gpu = pair()
    images, labels = batch[0].cuda(), batch[1].cuda()
    eager = gpu(images, labels)
    compiled = torch.compile(gpu)(images, labels)
    assert torch.allclose(compiled.scores, eager.scores, atol=1e-4)
    assert torch.allclose(compiled.reconstructions, eager.reconstructions, atol=1e-4)


def test_the_batches_on_the_gpu_are_those_on_the_cpu(data_root):
    split = load_split("mnist", str(data_root), True, download=False)

    def batches(device: str) -> list:
        g = torch.Generator().manual_seed(3)
        return [(x.cpu(), y.cpu()) for x, y, _, _ in Batches(split.to(torch.device(device)), 32,
                                                       shuffle=True, shift=2, generator=g)]
    for (x_gpu, y_gpu), (x_cpu, y_cpu) in zip(batches("cuda"), batches("cpu"), strict=True):
        assert torch.equal(x_gpu, x_cpu) and torch.equal(y_gpu, y_cpu)


def test_train_resume_and_eval_on_cuda(quick_args, tmp_path):
    run, data = tmp_path / "run", quick_args[quick_args.index("--data-dir") + 1]
    outputs = []
    for command in ([*quick_args, "--device", "cuda"],
                    ["--resume", str(run / "last.pt"), "--epochs", "2", "--device", "cuda",
                     "--data-dir", data],
                    ["--eval", str(run / "best.pt"), "--device", "cuda", "--data-dir", data]):
        result = subprocess.run([sys.executable, "train.py", *command], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "on cuda" in outputs[0] and "resumed from" in outputs[1]
    assert outputs[2].splitlines()[1].startswith("confusion matrix")
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
