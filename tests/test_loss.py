import pytest
import torch

from capsnet import CapsNetOutput, CapsuleLoss, margin_loss, reconstruction_loss


def test_margin_loss_by_hand():
    lengths = torch.tensor([[0.8, 0.3, 0.05], [0.95, 0.1, 0.6]])
    labels = torch.tensor([0, 2])
    # example 0: (0.9-0.8)^2 + 0.5*(0.3-0.1)^2 + 0 = 0.01 + 0.02
    # example 1: 0.5*(0.95-0.1)^2 + 0 + (0.9-0.6)^2 = 0.36125 + 0.09
    assert torch.allclose(margin_loss(lengths, labels), torch.tensor([0.03, 0.45125]))


def test_margin_loss_is_zero_beyond_the_margins():
    lengths = torch.tensor([[0.95, 0.05, 0.0]])
    assert margin_loss(lengths, torch.tensor([0])).item() == 0.0


def test_reconstruction_loss_is_a_per_image_sum_of_squares():
    images = torch.zeros(2, 1, 2, 2)
    reconstructions = torch.stack([torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2)])
    assert torch.allclose(reconstruction_loss(images, reconstructions), torch.tensor([1.0, 4.0]))


def test_capsule_loss_is_the_batch_mean_of_margin_plus_weighted_reconstruction():
    images = torch.zeros(2, 1, 2, 2)
    reconstructions = torch.stack([torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2)])
    lengths = torch.tensor([[0.8, 0.3, 0.05], [0.95, 0.1, 0.6]])
    output = CapsNetOutput(lengths, torch.zeros(2, 3, 16), reconstructions)
    labels = torch.tensor([0, 2])
    parts = CapsuleLoss().parts(images, labels, output)
    assert parts.score_loss.item() == pytest.approx((0.03 + 0.45125) / 2)
    assert parts.reconstruction.item() == pytest.approx(0.0005 * (1.0 + 4.0) / 2)
    assert CapsuleLoss()(images, labels, output).item() == pytest.approx(
        (0.03 + 0.45125) / 2 + 0.0005 * 2.5)
    assert CapsuleLoss(reconstruction_weight=0.0)(images, labels, output).item() == pytest.approx(
        (0.03 + 0.45125) / 2)


def test_official_recipe_margin_is_a_twentieth_of_the_papers_for_ten_classes():
    torch.manual_seed(0)
    lengths = torch.rand(4, 10)
    output = CapsNetOutput(lengths, torch.rand(4, 10, 16), torch.rand(4, 1, 28, 28))
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    paper = CapsuleLoss().parts(images, labels, output)
    official = CapsuleLoss(class_mean=True).parts(images, labels, output)
    assert torch.allclose(official.score_loss, paper.score_loss / 20)
    assert torch.equal(official.reconstruction, paper.reconstruction)


def test_a_filled_up_batch_gives_the_loss_gradients_and_counts_of_its_own_examples():
    """A pass's last batch is filled up to the batch size with weight-0 copies of its first
    examples (one shape for CUDA graphs): the loss, the gradients and the meters are those of
    the batch's own examples."""
    from capsnet.meters import Meters
    from capsnet.model import CapsNet
    torch.manual_seed(0)
    model = CapsNet(conv1_channels=16, primary_types=4, class_dim=8)
    images, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4])
    filled = torch.cat([images, images[:3]]), torch.cat([labels, labels[:3]])
    weights = torch.tensor([1.0] * 5 + [0.0] * 3)
    criterion = CapsuleLoss()
    results = []
    for batch_images, batch_labels, batch_weights in ((images, labels, None),
                                                      (*filled, weights)):
        model.zero_grad()
        output = model(batch_images, batch_labels)
        parts = criterion.parts(batch_images, batch_labels, output, batch_weights)
        parts.total.backward()
        meters = Meters(10)
        meters.add(output.scores, batch_labels, parts, batch_weights)
        totals = meters.totals()
        results.append((parts, [p.grad.clone() for p in model.parameters()], totals))
    (short, short_grads, short_totals), (full, full_grads, full_totals) = results
    assert torch.allclose(full.score_loss, short.score_loss, rtol=1e-6)
    assert torch.allclose(full.reconstruction, short.reconstruction, rtol=1e-6)
    for a, b in zip(full_grads, short_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert torch.allclose(full_totals.vector(), short_totals.vector(), rtol=1e-6)
    assert full_totals.summary()["loss"] == pytest.approx(float(short.total.detach()), rel=1e-6)
    assert full_totals.examples == 5 and full_totals.confusion.sum() == 5  # and confusion cells


def test_spread_loss_by_hand_for_one_and_for_two_classes_present():
    from capsnet.loss import spread_loss
    scores = torch.tensor([[0.8, 0.3, 0.75], [0.2, 0.9, 0.6]])
    # example 0, t = 0: max(0, 0.5 - 0.5)^2 + max(0, 0.5 - 0.05)^2 = 0.2025
    # example 1, t = 1: max(0, 0.5 - 0.7)^2 + max(0, 0.5 - 0.3)^2 = 0.04
    assert torch.allclose(spread_loss(scores, torch.tensor([0, 1]), 0.5),
                          torch.tensor([0.2025, 0.04]))
    # t in {0, 2} against i = 1: (0.5 - 0.5)^2 + (0.5 - 0.45)^2
    assert torch.allclose(spread_loss(scores[:1], torch.tensor([[0, 2]]), 0.5),
                          torch.tensor([0.0025]))


def test_the_spread_margin_rises_linearly_from_0_2_to_0_9_over_the_run():
    from capsnet.loss import spread_margin
    assert [round(spread_margin(p), 6) for p in (0.0, 0.5, 1.0, 2.0)] == [0.2, 0.55, 0.9, 0.9]


def test_the_spread_loss_follows_the_optimiser_steps_of_the_run():
    from capsnet.networks import capsule_loss
    from capsnet.run.build import run_progress
    from capsnet.config import Config
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9)
    criterion = capsule_loss(Config(score_loss="spread"), run_progress(scheduler, 4))
    output = CapsNetOutput(torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2, 16),
                           torch.zeros(1, 1, 2, 2))
    losses = []
    for _ in range(6):
        losses.append(criterion.parts(torch.zeros(1, 1, 2, 2), torch.tensor([0]), output).score_loss)
        optimizer.step()
        scheduler.step()
    # a_t - a_i = 0: the loss is m^2, m = 0.2, 0.375, 0.55, 0.725, 0.9, 0.9
    assert torch.allclose(torch.stack(losses), torch.tensor([0.04, 0.140625, 0.3025, 0.525625,
                                                             0.81, 0.81]))
