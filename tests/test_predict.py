"""python -m capsnet.predict on made PNG and JPEG files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import train
import capsnet
from capsnet import predict
from capsnet.run.storage import load_checkpoint
from capsnet.networks import network_of
from conftest import made_digits, write_dataset

SMALL = ["--conv1-channels", "16", "--primary-types", "4", "--class-dim", "8"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One-epoch checkpoints on the made digits: CapsNet, the baseline and MultiMNIST."""
    root = tmp_path_factory.mktemp("predict")
    data = write_dataset(root / "data", train=64, test=32)
    made = {}
    for name, extra in (("capsnet", SMALL), ("baseline", ["--model", "baseline",
                                                           "--baseline-channels", "8,8,4",
                                                           "--baseline-hidden", "16,8"]),
                        ("multimnist", [*SMALL, "--dataset", "multimnist"])):
        run = root / name
        assert train.main(["--data-dir", str(data), "--no-download", "--epochs", "1",
                           "--batch-size", "32", "--no-visdom",
                           "--run-dir", str(run), *extra]) == 0
        made[name] = run / "last.pt"
    return made


def model_of(path):
    checkpoint = load_checkpoint(path)
    model = network_of(checkpoint["config"]).make(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint["classes"]


def test_an_image_in_the_datasets_form_gets_the_models_own_prediction(checkpoints, tmp_path,
                                                                      capsys):
    images, _ = made_digits(3, 1)
    paths = []
    for k, image in enumerate(images):
        paths.append(tmp_path / f"digit{k}.png")
        Image.fromarray(image.numpy().astype(np.uint8)).save(paths[-1])
    assert predict.main([str(checkpoints["capsnet"]), *map(str, paths), "--json"]) == 1
    refused = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(r["no_digit"].startswith("it is not like a digit: the no-digit rule") for r in
               refused)  # a bright block is no digit, whatever this made-up model learnt
    assert predict.main([str(checkpoints["capsnet"]), *map(str, paths), "--json",
                         "--no-digit-rule", "off"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, classes = model_of(checkpoints["capsnet"])
    prepared = torch.stack([capsnet.prepare_digit(Image.open(path)).tensor for path in paths])
    with torch.no_grad():
        scores = model(prepared).scores
    for result, row in zip(results, scores):
        assert result["prediction"] == [classes[int(row.argmax())]]
        assert result["top"][0]["score"] == pytest.approx(float(row.max()), abs=1e-4)
        assert result["score"] == "capsule length" and result["done"][0] == "read 28x28 L"


def test_photos_of_other_sizes_and_colours_are_converted_and_a_bad_file_is_one_line(
        checkpoints, tmp_path, capsys):
    ink = np.full((40, 50, 3), 235, dtype=np.uint8)  # dark ink on white paper, in colour
    ink[10:30, 20:26] = (20, 20, 60)
    Image.fromarray(ink).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "black.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = predict.main([str(checkpoints["capsnet"]), str(tmp_path / "photo.jpg"),
                         str(tmp_path / "broken.png"), str(tmp_path / "black.png"),
                         "--out", str(out), "--no-digit-rule", "off"])
    captured = capsys.readouterr()
    assert code == 2
    assert (f"error: {tmp_path / 'broken.png'} is not a readable image "
            "(UnidentifiedImageError)") in captured.err.splitlines()
    lines = captured.out.splitlines()
    assert len(lines) == 2  # the other two are still classified
    assert ("read 50x40 RGB, made grey, inverted (dark ink on a bright ground), ") in lines[0]
    assert "the digit fitted into a 20x20 box" in lines[0]
    assert lines[1] == (f"{tmp_path / 'black.png'}: no digit found (the picture is one flat "
                        "colour); read 64x64 L")
    assert (out / "photo-reconstruction.png").exists()
    assert Image.open(out / "photo-reconstruction.png").size == (2 * 28 * 4, 28 * 4)
    assert predict.main([str(checkpoints["capsnet"]), str(tmp_path / "photo.jpg"),
                         "--invert", "no", "--no-digit-rule", "off"]) == 0
    assert "inverted" not in capsys.readouterr().out


def test_canvas_and_baseline_checkpoints(checkpoints, tmp_path, capsys):
    Image.fromarray(made_digits(1, 1)[0][0].numpy().astype(np.uint8)).save(tmp_path / "d.png")
    assert predict.main([str(checkpoints["multimnist"]), str(tmp_path / "d.png"), "--json",
                         "--out", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["prediction"]) == 2 and len(set(result["prediction"])) == 2
    assert "placed in the middle of the 36x36 canvas" in result["done"]
    assert Image.open(result["reconstruction"]).mode == "RGB"  # the two digits in two colours
    assert predict.main([str(checkpoints["baseline"]), str(tmp_path / "d.png"), "--json",
                         "--no-digit-rule", "off"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == "probability" and "reconstruction" not in result
    assert sum(t["score"] for t in result["top"]) <= 1.0 + 1e-3
    assert predict.main([str(tmp_path / "missing.pt"), str(tmp_path / "d.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def ink_box(tensor):
    rows = (tensor[0] > 0.25).any(dim=1).nonzero()
    cols = (tensor[0] > 0.25).any(dim=0).nonzero()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_a_drawn_digit_is_fitted_into_20x20_and_centred_by_its_mass_as_mnist_was(tmp_path):
    page = Image.new("L", (90, 200), 255)  # a tall, thin dark stroke off the page's centre,
    page.paste(0, (58, 30, 78, 170))  # as wide as MNIST's strokes once fitted into 20x20
    page.save(tmp_path / "one.png")
    prepared = predict.prepare(tmp_path / "one.png", 1, 28, 28, 0, "auto", "digit")
    height, width = ink_box(prepared.tensor)
    assert prepared.tensor.shape == (1, 28, 28) and height == 20 and width <= 3
    image = prepared.tensor[0]
    rows, cols = torch.arange(28.0), torch.arange(28.0)
    centre = (float((image.sum(1) * rows).sum() / image.sum()),
              float((image.sum(0) * cols).sum() / image.sum()))
    assert centre == pytest.approx((14, 14), abs=0.5)
    assert prepared.done[1:] == ["inverted (dark ink on a bright ground)",
                                 "the digit fitted into a 20x20 box keeping its aspect ratio "
                                 "(3x20) and centred by its centre of mass in 28x28, as MNIST's "
                                 "were"]


def test_a_photo_of_clothing_is_trimmed_and_its_longest_edge_made_28_as_fashion_mnist_was(
        tmp_path):
    page = Image.new("L", (300, 200), 255)
    page.paste(40, (50, 60, 250, 110))  # 200 x 50: a wide dark garment on white
    page.save(tmp_path / "scarf.png")
    prepared = predict.prepare(tmp_path / "scarf.png", 1, 28, 28, 0, "auto", "fashion")
    assert ink_box(prepared.tensor) == (7, 28)
    rows = (prepared.tensor[0] > 0.25).any(dim=1).nonzero()
    assert int(rows[0]) == 10  # centred: (28 - 7) // 2
    assert "its longest edge resized to 28" in prepared.done[-1]


def test_dark_ink_on_a_transparent_ground_is_drawn_on_white_first(tmp_path):
    sheet = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # transparent black: all black if dropped
    sheet.paste((0, 0, 0, 255), (25, 10, 35, 50))
    sheet.save(tmp_path / "ink.png")
    prepared = predict.prepare(tmp_path / "ink.png", 1, 28, 28, 0, "auto", "digit")
    assert prepared.done[1] == "its ink taken from its transparency"
    assert ink_box(prepared.tensor)[0] == 20 and float(prepared.tensor.max()) > 0.9


def test_the_folder_dataset_reads_transparent_images_on_white(tmp_path):
    from capsnet.data.datasets import DATASETS
    from capsnet.data.folder import read
    for split in ("train", "test"):
        folder = tmp_path / split / "a"
        folder.mkdir(parents=True)
        sheet = Image.new("LA", (20, 20), (0, 0))
        sheet.paste((0, 255), (5, 5, 15, 15))
        sheet.save(folder / "ink.png")
    images, _, _ = read(tmp_path, True, DATASETS["folder"], 20)
    assert images.shape == (1, 1, 20, 20)  # grey, as the files are
    assert int(images[0, 0, 0, 0]) == 255 and int(images[0, 0, 10, 10]) == 0


def test_help_says_how_an_image_is_prepared(capsys):
    with pytest.raises(SystemExit) as done:
        predict.main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "fitted into a 20x20 box" in out and "--invert auto" in out
