"""Every loss against a value computed by hand or by an independent formula."""

import math

import numpy as np
import pytest
import torch

from okd_ray.methods import (
    Discriminator,
    FusionModule,
    alignment_loss,
    discriminator_loss,
    distill_kl,
    generator_loss,
    sigmoid_rampup,
)


def numpy_kl(student, teacher, t):
    """T² · mean over the batch of Σ p_t (log p_t − log p_s), with softmax written out in numpy."""

    def softmax(z):
        e = np.exp(z / t - (z / t).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_t, p_s = softmax(teacher), softmax(student)
    return t * t * float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1)))


def test_kl_by_hand():
    # teacher softmax [3/4, 1/4], student [1/2, 1/2]: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distill_kl(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t", [1.0, 3.0, 4.5])
def test_kl_with_temperature_matches_numpy(t):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    expected = numpy_kl(student.double().numpy(), teacher.double().numpy(), t)
    assert distill_kl(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_for_equal_logits_and_t_squared_scales():
    z = torch.randn(4, 5)
    assert distill_kl(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # with logits pre-scaled by T, the T-tempered loss is exactly T² times the plain one
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert distill_kl(3 * s, 3 * t, 3.0).item() == pytest.approx(9 * distill_kl(s, t, 1.0).item(), rel=1e-5)


def test_kl_target_carries_no_gradient():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    distill_kl(student, teacher, 3.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_lsgan_terms_by_hand():
    peer, own = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5])
    # (1-1)², (1-0.5)² -> mean 0.125 ; 0², 0.5² -> mean 0.125
    assert discriminator_loss(peer, own).item() == pytest.approx(0.25)
    # (1-0)², (1-0.5)² -> mean 0.625
    assert generator_loss(own).item() == pytest.approx(0.625)


@pytest.mark.parametrize("bounded", [False, True], ids=["score", "sigmoid"])
def test_lsgan_orientation_peer_is_real(bounded):
    """Training D on the loss makes it score the peer's map 1 and the network's own map 0, whether its output is
    an unbounded score or in [0, 1] (method.terms.adversarial.output)."""
    torch.manual_seed(0)
    disc = Discriminator(8, 4, bounded=bounded)
    peer, own = torch.rand(32, 8, 4, 4) + 1.0, torch.rand(32, 8, 4, 4) - 1.0
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        discriminator_loss(disc(peer), disc(own)).backward()
        opt.step()
    assert disc(peer).mean().item() == pytest.approx(1.0, abs=0.1)
    assert disc(own).mean().item() == pytest.approx(0.0, abs=0.1)
    # and the generator's gradient pushes its own score up, toward "real"
    score = disc(own).detach().requires_grad_()
    generator_loss(score).backward()
    assert (score.grad < 0).all()


def test_sigmoid_discriminator_is_the_score_squashed():
    """The same weights (one state dict) give sigmoid(score): the output setting changes nothing else."""
    torch.manual_seed(1)
    score = Discriminator(8, 4)
    bounded = Discriminator(8, 4, bounded=True)
    bounded.load_state_dict(score.state_dict())
    x = torch.randn(5, 8, 4, 4)
    out = bounded(x)
    assert torch.equal(out, torch.sigmoid(score(x))) and ((out > 0) & (out < 1)).all()


def test_alignment_by_hand():
    own, peer = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0])
    assert alignment_loss(own, peer, "l1").item() == pytest.approx((1 + 0 + 3) / 3)
    assert alignment_loss(own, peer, "l2").item() == pytest.approx((1 + 0 + 9) / 3)
    peer.requires_grad_()
    alignment_loss(own.requires_grad_(), peer, "l2").backward()
    assert peer.grad is None


@pytest.mark.parametrize(
    "epoch, length, expected",
    [
        (0, 80, math.exp(-5)),
        (40, 80, math.exp(-1.25)),
        (60, 80, math.exp(-5 * 0.0625)),
        (80, 80, 1.0),
        (200, 80, 1.0),
        (0, 0, 1.0),
        (1, 4, math.exp(-5 * 0.5625)),
    ],
)
def test_sigmoid_rampup_by_hand(epoch, length, expected):
    assert sigmoid_rampup(epoch, length) == pytest.approx(expected)


def test_fusion_shapes_for_heterogeneous_members():
    shapes = [(16, 8, 8), (32, 4, 4), (64, 2, 2)]
    fusion = FusionModule(shapes, num_classes=10)
    maps = [torch.randn(5, *s) for s in shapes]
    assert fusion(maps).shape == (5, 10)
    assert fusion.size == (2, 2)
    depthwise, pointwise = fusion.fuse[0], fusion.fuse[3]
    assert depthwise.groups == depthwise.in_channels == 16 + 32 + 64
    assert (pointwise.in_channels, pointwise.out_channels) == (112, 64)


def test_fusion_of_two_equal_branches_is_the_papers():
    """Two 64×8×8 branches: depthwise over 128 channels, pointwise 128 → 64, as in the reference code."""
    fusion = FusionModule([(64, 8, 8), (64, 8, 8)], num_classes=100)
    assert fusion.fuse[3].in_channels == 128 and fusion.fuse[3].out_channels == 64
    assert fusion([torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8)]).shape == (2, 100)
