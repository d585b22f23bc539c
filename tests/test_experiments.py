"""The paper's generalization experiments: MultiMNIST (two overlapping digits) and affNIST
(train on mnist40, test on affine-transformed digits), from the generator to train.py."""
from pathlib import Path

import numpy as np
import pytest
import torch

from capsnet import analyze
from capsnet.data.records import Split
from capsnet.data.splits import load_split
from capsnet.data import affine
from capsnet.data.canvas import CanvasBatches
from capsnet.loss import CapsuleLoss, LossParts, margin_loss
from capsnet.meters import Meters
from capsnet.model import CapsNet, CapsNetOutput, predict
from conftest import run_main, write_dataset

CLASSES = tuple("0123456789")
NO_LOSS = LossParts(torch.tensor(0.0), torch.tensor(0.0))


def noise_digits(count: int, seed: int = 0) -> Split:
    """28x28 digits of random non-zero pixels (so each digit's place shows as its bounding box),
    class k % 10."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 120, (count, 1, 28, 28), generator=g, dtype=torch.uint8)
    return Split(images, torch.arange(count) % 10, CLASSES)


def placement(target: torch.Tensor) -> tuple[int, int]:
    """Top-left corner of the non-zero 28x28 block of one canvas (1, S, S)."""
    rows = target[0].sum(dim=1).nonzero().flatten()
    cols = target[0].sum(dim=0).nonzero().flatten()
    assert len(rows) == len(cols) == 28  # the whole digit is on the canvas
    return int(rows[0]), int(cols[0])


def test_multimnist_examples_hold_two_digits_of_different_classes_each_shifted_at_most_4px():
    split = noise_digits(40)
    generator = torch.Generator().manual_seed(0)
    batches = CanvasBatches(split, 20, 36, 2, shuffle=True, generator=generator)
    corners = []
    for _ in range(3):  # three training passes
        for images, labels, targets, _ in batches:
            assert images.shape == (20, 1, 36, 36) and targets.shape == (20, 2, 1, 36, 36)
            assert (labels[:, 0] < labels[:, 1]).all()  # two classes, in ascending order
            # the input is the two kept digits added and clipped
            assert torch.allclose(images, (targets[:, 0] + targets[:, 1]).clamp(max=1.0))
            for example in range(20):
                for slot in range(2):
                    target = targets[example, slot]
                    row, col = placement(target)
                    corners.append((row, col))
                    digit = (target[0, row:row + 28, col:col + 28] * 255).round().to(torch.uint8)
                    source = [k for k in range(40) if torch.equal(split.images[k, 0], digit)]
                    assert len(source) == 1 and split.labels[source[0]] == labels[example, slot]
    rows, cols = zip(*corners)
    assert min(rows) == min(cols) == 0 and max(rows) == max(cols) == 8  # up to 4 px either way


def test_multimnist_test_set_is_the_same_for_every_run_and_training_pairs_are_new_each_pass():
    split = noise_digits(40)
    first = [s for s in CanvasBatches(split, 16, 36, 2)]
    again = [s for s in CanvasBatches(split, 16, 36, 2, generator=torch.Generator().manual_seed(5))]
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [int(s.weights.sum()) for s in first] == [16, 16, 8]  # one pair per digit, 40 in all
    train = CanvasBatches(split, 40, 36, 2, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    one, two = next(iter(train)), next(iter(train))
    assert not torch.equal(one.images, two.images)
    same = CanvasBatches(split, 40, 36, 2, shuffle=True,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(next(iter(same)).images, one.images)


def test_a_shorter_multimnist_test_set_is_the_first_pairs_of_the_full_one():
    """--test-samples N pairs the first N test digits with partners from all test digits, so
    quick evaluations test the first examples of the full test set."""
    split = noise_digits(300)
    full = next(iter(CanvasBatches(split, 300, 36, 2)))
    for limit in (100, 200):
        batches = CanvasBatches(split, 300, 36, 2, limit=limit)
        assert batches.count == limit and len(batches) == 1
        assert batches.describe() == (f"{limit} pairs (the first {limit} of 300 digits, "
                                      "partners from all 300)")
        short = next(iter(batches)).real()
        assert all(torch.equal(a, b[:limit]) for a, b in zip(short, full))


def test_test_reconstructions_are_scored_against_the_digit_of_their_class():
    """Labels (2, 5); the two longest capsules are 5 and 7. Masked by the predicted classes in
    ascending order, the reconstructions are of 5 (slot 0) and 7 (slot 1). Aligned, the 5 is
    scored against the true 5 (slot 1), and the 7 against the digit it displaced (the 2)."""
    from capsnet.training import forward_step
    lengths = torch.full((1, 10), 0.05)
    lengths[0, 5], lengths[0, 7] = 0.9, 0.8
    targets = torch.zeros(1, 2, 1, 2, 2)
    targets[0, 0, 0, 0, 0] = 1.0  # the 2: one bright pixel at the top left
    targets[0, 1, 0, 1, 1] = 1.0  # the 5: one at the bottom right
    rebuilt = torch.zeros(1, 2, 1, 2, 2)
    rebuilt[0, 0, 0, 1, 1] = 1.0  # the reconstruction of 5, exactly the true 5
    rebuilt[0, 1, 0, 0, 1] = 1.0  # that of 7: one pixel top right

    def network(images, labels=None, objects=1):
        assert labels is None and objects == 2  # at test, masked by the predictions
        return CapsNetOutput(lengths, torch.zeros(1, 10, 16), rebuilt)
    step = forward_step(network, CapsuleLoss(), lambda: torch.autocast("cpu", enabled=False),
                        train=False)
    _, result = step((torch.zeros(1, 1, 2, 2), torch.tensor([[2, 5]]), targets, torch.ones(1)))
    # the 5 against the true 5: 0; the 7 against the 2: (1 - 0)^2 + (0 - 1)^2 = 2
    assert torch.isclose(result.parts.reconstruction, torch.tensor(0.0005 * 2.0))
    # unaligned, both slots would be wrong: 5 vs the 2 gives 2, 7 vs the 5 gives 2
    assert torch.equal(result.output.reconstructions[0, 1], rebuilt[0, 0])


def test_mnist40_places_each_digit_anywhere_on_40x40():
    split = noise_digits(50)
    batches = CanvasBatches(split, 50, 40, 1, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    corners = []
    for _ in range(4):
        images, labels, targets, _ = next(iter(batches))
        assert images.shape == (50, 1, 40, 40) and torch.equal(labels.sort().values,
                                                               split.labels.sort().values)
        assert targets is images
        corners += [placement(image) for image in images]
    rows, cols = zip(*corners)
    assert min(rows) == min(cols) == 0 and max(rows) == max(cols) == 12


def test_two_target_margin_and_reconstruction_terms_by_hand():
    lengths = torch.tensor([[0.95, 0.3, 0.05, 0.7, 0.2, 0, 0, 0, 0, 0]])
    labels = torch.tensor([[0, 3]])
    # present 0: relu(0.9 - 0.95)^2 = 0; present 3: (0.9 - 0.7)^2 = 0.04;
    # absent: 0.5 * ((0.3 - 0.1)^2 + (0.2 - 0.1)^2) = 0.5 * (0.04 + 0.01) = 0.025
    assert torch.allclose(margin_loss(lengths, labels), torch.tensor([0.065]))
    targets = torch.zeros(1, 2, 1, 4, 4)
    targets[0, 0, 0, 0, 0], targets[0, 1, 0, 3, 3] = 1.0, 0.5
    reconstructions = torch.full((1, 2, 1, 4, 4), 0.25)
    # slot 0: 15 x 0.0625 + 0.5625 = 1.5; slot 1: 15 x 0.0625 + 0.0625 = 1.0; sum 2.5
    output = CapsNetOutput(lengths, torch.zeros(1, 10, 16), reconstructions)
    parts = CapsuleLoss().parts(targets, labels, output)
    assert torch.isclose(parts.score_loss, torch.tensor(0.065))
    assert torch.isclose(parts.reconstruction, torch.tensor(0.0005 * 2.5))


def test_the_decoder_runs_once_per_digit_masked_by_its_class():
    torch.manual_seed(0)
    model = CapsNet(image_size=36).eval()
    images = torch.rand(3, 1, 36, 36)
    labels = torch.tensor([[1, 4], [0, 9], [2, 3]])
    with torch.no_grad():
        output = model(images, labels)
        assert output.reconstructions.shape == (3, 2, 1, 36, 36)
        for slot in range(2):
            alone = model.reconstruct(output.poses, labels[:, slot])
            assert torch.allclose(output.reconstructions[:, slot], alone, atol=1e-6)
        tested = model(images, None, 2)  # at test: the two longest capsules, ascending
        assert torch.equal(predict(tested.scores, 2),
                           tested.scores.topk(2).indices.sort(dim=1).values)


def pair_meters(lengths: list[list[float]], labels: list[list[int]]) -> Meters:
    meters = Meters(10)
    meters.add(torch.tensor(lengths), torch.tensor(labels), NO_LOSS)
    return meters


def test_pair_metric_on_crafted_capsule_lengths():
    base = [0.05] * 10
    both = base.copy(); both[2], both[5] = 0.9, 0.8  # 2 and 5: right
    swapped = base.copy(); swapped[5], swapped[7] = 0.9, 0.8  # 5 right, 7 wrong (true 2 and 5)
    tie = base.copy(); tie[0], tie[1], tie[2] = 0.9, 0.5, 0.5  # tie: the lower class (1) wins
    meters = pair_meters([both, swapped, tie, tie], [[2, 5], [2, 5], [0, 2], [0, 1]])
    summary = meters.totals().summary(objects=2)
    assert summary["accuracy"] == pytest.approx(50.0)  # examples 1 and 4
    assert summary["at_least_one"] == pytest.approx(100.0)
    confusion = meters.totals().confusion.round().long()
    assert confusion.sum() == 8  # every digit counted
    assert confusion[5, 5] == 2 and confusion[2, 7] == 1  # 5 matched in its slot, 2 taken for 7
    assert confusion[2, 1] == 1 and confusion[0, 0] == 2 and confusion[1, 1] == 1


def test_one_label_meters_are_plain_accuracy():
    meters = Meters(10)
    lengths = torch.eye(10)[[3, 3, 7]]
    meters.add(lengths, torch.tensor([3, 4, 7]), NO_LOSS)
    summary = meters.totals().summary()
    assert summary["accuracy"] == pytest.approx(200 / 3) and "at_least_one" not in summary


def write_affnist(root: Path, count: int = 32, seed: int = 2) -> Path:
    """test.mat in affNIST's layout: struct affNISTdata, image (1600, N) one row-major 40x40
    image per column, label_int (1, N), label_one_of_n (10, N)."""
    import scipy.io
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 40, 40), generator=g)
    for k, label in enumerate(labels.tolist()):  # the made digits' class blocks, moved by 6
        row, col = 10 + 6 * (label // 4), 10 + 6 * (label % 4)
        images[k, row:row + 6, col:col + 6] = 250
    folder = root / "affNIST"
    folder.mkdir(parents=True)
    one_of_n = np.eye(10, dtype=np.uint8)[labels.numpy()].T
    scipy.io.savemat(folder / "test.mat", {"affNISTdata": {
        "image": images.numpy().astype(np.uint8).reshape(count, -1).T,
        "label_int": labels.numpy().astype(np.uint8)[None],
        "label_one_of_n": one_of_n}})
    return root


def test_affnist_reader_reads_its_matlab_layout(tmp_path):
    root = write_affnist(tmp_path)
    split = load_split("affnist", str(root), False, False)
    assert split.images.shape == (32, 1, 40, 40) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [k % 10 for k in range(32)]
    assert split.images[3, 0, 10 + 6 * 0, 10 + 6 * 3] == 250  # row-major: row, then column
    from capsnet.errors import UserError
    with pytest.raises(UserError, match="test set only.*mnist40"):
        load_split("affnist", str(root), True, False)
    import scipy.io
    scipy.io.savemat(root / "affNIST" / "test.mat", {"something": np.zeros(3)})
    with pytest.raises(UserError, match="affNISTdata"):
        load_split("affnist", str(root), False, False)
    (root / "affNIST" / "test.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="not a readable .mat"):
        load_split("affnist", str(root), False, False)


def test_the_stand_in_is_seeded_affine_mnist_on_40x40(tmp_path):
    root = write_dataset(tmp_path, train=10, test=30)
    first = load_split("mnist-affine-standin", str(root), False, False)
    second = load_split("mnist-affine-standin", str(root), False, False)
    plain = load_split("mnist", str(root), False, False)
    assert first.images.shape == (30, 1, 40, 40) and torch.equal(first.images, second.images)
    assert torch.equal(first.labels, plain.labels)
    centred = torch.nn.functional.pad(plain.images, (6,) * 4)
    moved = [not torch.equal(a, b) for a, b in zip(first.images, centred)]
    assert all(moved)
    fewer = load_split("mnist-affine-standin", str(root), False, False, limit=10)
    assert torch.equal(fewer.images, first.images[:10])  # --test-samples: the same first images
    # the linear parts stay in the documented ranges and reach their ends
    linear = affine.transforms(affine.draws(5000))
    scale_x = linear[:, :, 0].norm(dim=1)  # |A e_x| = sx (rotation keeps lengths)
    assert 0.8 <= scale_x.min() < 0.81 and 1.19 < scale_x.max() <= 1.2
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]).rad2deg()  # A e_x = sx (cos, sin)
    assert -20 <= angle.min() < -19.9 and 19.9 < angle.max() <= 20


def test_multimnist_trains_evaluates_and_analyzes_through_train_py(tmp_path, capsys):
    root = write_dataset(tmp_path / "data", train=64, test=32)
    run = tmp_path / "run"
    args = ["--dataset", "multimnist", "--data-dir", str(root), "--no-download", "--epochs", "1",
            "--batch-size", "32", "--no-visdom", "--run-dir", str(run)]
    code, err = run_main(args, capsys)
    assert code == 0, err
    header, row = (run / "metrics.csv").read_text().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert float(values["test_accuracy"]) <= float(values["test_at_least_one"])
    import train
    assert train.main(["--eval", str(run / "last.pt"), "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "pair accuracy" in out[0] and "at least one right" in out[0]
    assert "on multimnist (32 pairs (all 32 digits, partners from all 32))" in out[0]
    pair_accuracy = float(out[0].split("pair accuracy ")[1].split("%")[0])
    assert pair_accuracy == pytest.approx(float(values["test_accuracy"]), abs=0.01)
    confusion = [[int(n) for n in line.split()[1:11]] for line in out[3:13]]
    assert sum(map(sum, confusion)) == 2 * 32  # both digits of each of the 32 test pairs
    assert analyze.main([str(run / "last.pt"), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "pairs.png").stat().st_size > 0
    assert "pairs.png" in (tmp_path / "figures" / "index.html").read_text()


def test_a_mnist40_checkpoint_is_tested_on_affnist_and_the_stand_in(tmp_path, capsys):
    root = write_affnist(write_dataset(tmp_path / "data", train=64, test=32))
    run = tmp_path / "run"
    code, err = run_main(["--dataset", "mnist40", "--data-dir", str(root), "--no-download",
                          "--epochs", "1", "--batch-size", "32", "--no-visdom",
                          "--run-dir", str(run)], capsys)
    assert code == 0, err
    import train
    for dataset, count in (("affnist", 32), ("mnist-affine-standin", 32)):
        assert train.main(["--eval", str(run / "last.pt"), "--dataset", dataset,
                           "--data-dir", str(root)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert f"on {dataset} ({count} images)" in out[0] and "accuracy" in out[0]
        confusion = [[int(n) for n in line.split()[1:11]] for line in out[3:13]]
        assert sum(map(sum, confusion)) == count
    # an MNIST (28x28) checkpoint is refused there, in one line
    code, err = run_main(["--eval", str(run / "last.pt"), "--dataset", "mnist",
                          "--data-dir", str(root)], capsys)
    assert code == 2 and "trained on mnist40" in err and "\n" not in err
