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
from capsnet import digitcheck, digits, predict
from capsnet import digitrule, nondigits
from capsnet.digitrule import DigitRule
from capsnet.weights import FOLDER, record_of

DATA = os.environ.get("CAPSNET_DATA_DIR", "")


@pytest.fixture(scope="module")
def model():
    return capsnet.pretrained("mnist")


@pytest.fixture(scope="module")
def rule():
    return DigitRule.load(FOLDER / record_of("mnist")["no_digit_rule"]["file"])


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Five pictures of each variant (the MNIST ones when CAPSNET_DATA_DIR holds MNIST)."""
    mnist = digitcheck.read_mnist(DATA) if DATA else None
    return digitcheck.make_pictures(tmp_path_factory.mktemp("pictures"), mnist, sample=5)


def read(model, rule, path: Path) -> str:
    """What the command would answer: the class, or "" for no digit (the preparation's or the
    shipped no-digit rule's)."""
    prepared = predict.prepare(path, 1, 28, 28, 0, "auto", "digit")
    if prepared.tensor is None or float(rule.scores(prepared.tensor[None])[0]) < rule.threshold:
        return ""
    with torch.inference_mode():
        output = model(prepared.tensor[None])
    return str(int(output.scores.argmax()))


@pytest.mark.parametrize("variant", [v.name for v in digitcheck.VARIANTS if v.sure])
def test_a_sample_of_every_measured_variant_is_read_right(variant, sample, model, rule):
    if variant not in sample:
        pytest.skip("CAPSNET_DATA_DIR does not hold MNIST")
    answers = [(read(model, rule, path), label) for path, label in sample[variant]]
    assert len(answers) == 5 and all(got == label for got, label in answers), answers


def test_letters_symbols_and_scenes_are_refused_as_holding_no_digit(sample, model, rule):
    """The preparation refuses filled shapes, and the no-digit rule letters and symbols it has
    not seen (digitcheck draws them by other strokes than capsnet.nondigits'); docs/predict.md
    counts how many of each."""
    unsure = [v.name for v in digitcheck.VARIANTS if not v.sure]
    answers = {name: [read(model, rule, path) for path, _ in sample[name]] for name in unsure}
    refused = {name: answer.count("") for name, answer in answers.items()}
    assert sum(refused.values()) >= 16, answers  # of 20


def test_the_no_digit_rule_keeps_mnist_test_digits_and_ships_with_the_model(model, rule):
    """Its threshold set on held-out training digits, it keeps the test digits the model reads
    right (docs/predict.md counts them all); it is stored in the package and its threshold in
    mnist.json, and it reads back as written."""
    record = record_of("mnist")["no_digit_rule"]
    assert abs(record["threshold"] - rule.threshold) < 1e-3 and "MNIST training" in rule.about
    if not DATA:
        pytest.skip("CAPSNET_DATA_DIR does not hold MNIST")
    images, labels = digitcheck.read_mnist(DATA)
    tensors = torch.stack([capsnet.prepare_digit(image).tensor for image in images[:500]])
    with torch.inference_mode():
        output = model(tensors)
    right = output.scores.argmax(1) == torch.from_numpy(labels[:500]).long()
    refused = rule.scores(tensors) < rule.threshold
    assert int((right & refused).sum()) <= 1 and int(right.sum()) >= 495


def test_the_rule_is_learnt_from_digits_against_pictures_of_none(tmp_path, capsys):
    """Learnt from 1,000 training digits in one pass, the rule's threshold keeps all but
    REFUSED of the held-out digits, it scores letters below digits, it reads back as written,
    and the command says what it did; models of other datasets have none."""
    if not DATA:
        pytest.skip("CAPSNET_DATA_DIR does not hold MNIST")
    out = tmp_path / "rule.pt"
    assert digitrule.main(["--samples", "1000", "--epochs", "1", "--processes", "1",
                           "--data-dir", DATA, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "letters and symbols:" in said and f"written to {out}" in said
    rule = DigitRule.load(out)
    images, labels = digitcheck.read_mnist(DATA)
    unseen, unseen_labels = images[9800:] / 255.0, labels[9800:]  # test digits
    digits_ = torch.from_numpy(nondigits.made("MNIST digits", unseen, unseen_labels, 0))[:, None]
    letters = torch.from_numpy(nondigits.made("letters and symbols", unseen, unseen_labels,
                                              0))[:, None]
    assert float(rule.scores(letters).median()) < float(rule.scores(digits_).median())
    assert float((rule.scores(digits_) < rule.threshold).float().mean()) < 0.05
    assert digitrule.rule_for("fashion-mnist")[0] is None
    assert digitrule.rule_for("fashion-mnist")[1].startswith("no-digit rule off")
    for wrong, said in ((["--samples", "10"], "--samples must be 1000 to 60000 (got 10)"),
                        (["--out", str(tmp_path / "none" / "rule.pt")], "folder does not exist")):
        with pytest.raises(SystemExit) as stopped:
            digitrule.main(wrong)
        assert stopped.value.code == 2 and said in capsys.readouterr().err


def test_the_pictures_of_no_digit_are_not_digits_and_the_digits_are():
    """No glyph that is written as a digit (O, I, S, Z, ...) is among the letters; a 0 or a 1 is
    never mirrored or turned into a picture of no digit (it would still be one); every kind
    of picture is a prepared 28x28 image."""
    assert not set("OISZlosz0123456789()[]|/\\") & set(nondigits.LETTERS + nondigits.SYMBOLS)
    rng = np.random.default_rng(0)
    ring = np.zeros((28, 28), dtype=np.float32)
    yy, xx = np.mgrid[:28, :28]
    ring[np.abs(np.hypot(yy - 14, xx - 14) - 7) < 1.5] = 1.0
    assert all(nondigits.turned(rng, ring, label) is None for label in (0, 1) for _ in range(20))
    shares = sorted([k.share for k in nondigits.KINDS.values() if k.digit] + [digitrule.HELD_OUT])
    assert all(a[1] <= b[0] for a, b in zip(shares, shares[1:]))  # no held-out digit is learnt
    seeds = [k.seed for k in nondigits.KINDS.values()] + [digitrule.HELD_OUT_SEED]
    assert len(set(seeds)) == len(seeds)
    for name in nondigits.KINDS:
        pictures = nondigits.made(name, np.repeat(ring[None], 6, 0), np.arange(6), seed=1)
        assert pictures.shape[1:] == (28, 28) and len(pictures) >= 1, name
        assert pictures.min() >= 0 and pictures.max() <= 1, name


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


def test_a_shadow_across_the_page_leaves_the_ink_as_dark_as_in_the_light():
    """The paper is found against its own neighbourhood: one stroke, half in a shadow that
    takes half the light, comes out as one even stroke."""
    page = np.full((300, 400), 220.0)
    page[60:240, 190:202] = 40  # a "1"
    page[150:, :] *= 0.5  # a hard shadow's edge across the stroke
    ink, _ = digits.without_paper(1 - page / 255, digits.paper_window(1 - page / 255))
    lit, shaded = ink[70:140, 192:200], ink[160:230, 192:200]
    assert abs(float(lit.mean()) - float(shaded.mean())) < 0.05
    paper = np.concatenate([ink[:, :150], ink[:, 250:]], axis=1)
    assert float((paper > 0.2).mean()) < 0.01  # at most the shadow's edge, a pixel wide


def test_notebook_rules_are_taken_out_and_the_digit_crossing_them_kept():
    page = np.full((360, 480), 230.0)
    for row in range(30, 360, 70):
        page[row:row + 2, :] = 170  # faint rules across the page
    page[:, 60:62] = 160  # a margin line
    page[80:230, 240:246] = 30  # a "1" crossing two rules
    digit = capsnet.prepare_digit(page.astype(np.uint8))
    assert any("ruled lines taken out" in step for step in digit.done), digit.done
    box = digit.tensor[0] > 0.5
    rows, cols = box.any(dim=1).nonzero(), box.any(dim=0).nonzero()
    assert int(rows[-1] - rows[0]) >= 18 and int(cols[-1] - cols[0]) <= 6  # one tall stroke


def test_the_specks_that_a_blank_ruled_pages_rules_leave_are_no_digit(tmp_path):
    """digitcheck's 14th blank notebook page, whose rules, taken out, left their broken ends
    (strokes 0.09 pixels wide at 28x28, over the page): it was read as a "0"."""
    k = next(k for k, v in enumerate(digitcheck.VARIANTS) if v.name.startswith("blank: ruled"))
    rng = np.random.default_rng(k)  # as make_pictures draws that variant's pictures
    for n in range(14):
        digitcheck.VARIANTS[k].make(None, rng, tmp_path / f"{n:03d}.png")
    with Image.open(digitcheck.existing(tmp_path / "013.png")) as image:
        digit = capsnet.prepare_digit(image)
    assert digit.tensor is None
    assert digit.no_digit.startswith("the ink is specks, not a pen's strokes (strokes 0.09 "), \
        digit.no_digit


def test_a_large_digit_in_a_fine_pen_is_read_not_taken_for_specks():
    """A "0" 1,400 pixels high drawn 6 pixels wide on a 4032x3024 photo (a fine-liner digit
    10 cm high on an A4 page): its strokes are 0.2 pixels wide at 28x28, above the specks'."""
    y, x = np.ogrid[0:4032, 0:3024]
    ring = np.abs(np.sqrt(((y - 2016) / 700) ** 2 + ((x - 1512) / 450) ** 2) - 1) * 450 < 3
    digit = capsnet.prepare_digit(np.where(ring, 30, 235).astype(np.uint8))
    assert digit.tensor is not None, digit.no_digit
    assert any("thickened to MNIST's width (0.2 to" in step for step in digit.done), digit.done


def test_a_thin_pen_is_thickened_to_mnists_width_and_a_big_photo_is_reduced_first():
    page = np.full((3024, 4032), 225, dtype=np.uint8)
    page[900:2100, 1990:2030] = 40  # a ballpoint "1", 1% of the side wide
    digit = capsnet.prepare_digit(page)
    assert digit.done[1].startswith("reduced to 576x432"), digit.done
    assert any(step.startswith("its strokes thickened to MNIST's width") for step in digit.done)
    width = digits.stroke_width(digit.tensor[0].numpy() > 0.5)
    assert abs(width - digits.MNIST_STROKE) <= 0.2 * digits.MNIST_STROKE


def test_filled_shapes_and_wide_lines_are_no_digit():
    disc = np.full((200, 200), 230, dtype=np.uint8)
    yy, xx = np.mgrid[:200, :200]
    disc[(yy - 100) ** 2 + (xx - 100) ** 2 < 20 ** 2] = 30  # within the paper's neighbourhood
    assert capsnet.prepare_digit(disc).no_digit.startswith("the ink is a filled shape")
    bar = np.full((200, 200), 230, dtype=np.uint8)
    bar[95:105, 20:180] = 30
    assert "times as wide as it is tall" in capsnet.prepare_digit(bar).no_digit

