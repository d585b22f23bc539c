"""Pictures of digits as people make them, read by the shipped MNIST model through
capsnet.prepare_digit (the path of capsnet.predict): a sample of every variant that
docs/predict.md measures, so that the preparation cannot silently regress; and what the command
says of a picture without a digit."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import capsnet
from capsnet import digitcheck, predict

DATA = os.environ.get("CAPSNET_DATA_DIR", "")


@pytest.fixture(scope="module")
def model():
    return capsnet.pretrained("mnist")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Five pictures of each variant (the MNIST ones when CAPSNET_DATA_DIR holds MNIST)."""
    mnist = digitcheck.read_mnist(DATA) if DATA else None
    return digitcheck.make_pictures(tmp_path_factory.mktemp("pictures"), mnist, sample=5)


def read(model, path: Path) -> str:
    """What the command would answer: the class, or "" for no digit."""
    prepared = predict.prepare(path, 1, 28, 28, 0, "auto", "digit")
    if prepared.tensor is None:
        return ""
    with torch.inference_mode():
        return str(int(model(prepared.tensor[None]).scores.argmax()))


@pytest.mark.parametrize("variant", [v.name for v in digitcheck.VARIANTS])
def test_a_sample_of_every_measured_variant_is_read_right(variant, sample, model):
    if variant not in sample:
        pytest.skip("CAPSNET_DATA_DIR does not hold MNIST")
    answers = [(read(model, path), label) for path, label in sample[variant]]
    assert len(answers) == 5 and all(got == label for got, label in answers), answers


def test_a_prepared_digit_prepared_again_is_itself(sample, model):
    """MNIST's own form is a fixed point: what prepare_digit makes, it leaves nearly as it is
    (the same box and place; its grey levels rescaled by at most a few percent)."""
    for path, _ in sample["typed, photo-like (shaded paper, noise, blur, off centre, JPEG)"]:
        once = capsnet.prepare_digit(Image.open(path)).tensor[0]
        twice = capsnet.prepare_digit((once.numpy() * 255).astype(np.uint8)).tensor[0]
        assert (once - twice).abs().mean() < 0.02 and (once - twice).abs().max() < 0.25


def test_the_library_call_takes_a_picture_or_an_array_and_says_what_it_did():
    page = np.full((120, 90), 235, dtype=np.uint8)
    page[20:100, 40:52] = 30  # a dark stroke: a "1"
    for picture in (Image.fromarray(page), page):
        digit = capsnet.prepare_digit(picture)
        assert digit.tensor.shape == (1, 28, 28) and digit.no_digit == ""
        assert "inverted (dark ink on a bright ground)" in digit.done
        assert digit.done[-1].startswith("the digit fitted into a 20x20 box")
    blank = capsnet.prepare_digit(np.full((50, 50), 200, dtype=np.uint8))
    assert blank.tensor is None and blank.no_digit == "the picture is one flat colour"


def test_a_picture_without_a_digit_is_said_so_and_the_command_exits_1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paper = np.clip(220 + rng.normal(0, 6, (200, 200)), 0, 255).astype(np.uint8)
    Image.fromarray(paper).save(tmp_path / "paper.png")
    page = np.full((200, 200), 240, dtype=np.uint8)
    page[40:160, 90:104] = 20
    Image.fromarray(page).save(tmp_path / "one.png")
    code = predict.main(["--pretrained", "mnist", str(tmp_path / "paper.png"),
                         str(tmp_path / "one.png"), "--json"])
    assert code == 1  # no digit in one picture; the other still classified
    blank, one = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert blank["prediction"] is None and blank["no_digit"].startswith("no ink stands out")
    assert one["prediction"] == ["1"] and "no_digit" not in one
    assert predict.main(["--pretrained", "mnist", str(tmp_path / "paper.png")]) == 1
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'paper.png'}: no digit found (no ink stands out")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert predict.main(["--pretrained", "mnist", str(tmp_path / "paper.png"),
                         str(tmp_path / "broken.png")]) == 2  # unreadable wins


def test_a_top_score_below_one_half_is_said_to_be_of_low_confidence():
    unsure = predict.describe(torch.tensor([0.3, 0.2] + [0.0] * 8), list("0123456789"), 1,
                              "capsnet")
    sure = predict.describe(torch.tensor([0.95] + [0.0] * 9), list("0123456789"), 1, "capsnet")
    assert unsure["low_confidence"] and unsure["prediction"] == ["0"]
    assert "low_confidence" not in sure
    line = predict.text({"image": "x.png", **unsure, "done": ["read 28x28 L"]})
    assert "low confidence" in line and line.startswith("x.png: 0 ")
