"""The population step: the fusion's gradient reaches the members exactly as one joint backward would."""

import pytest
import torch
import torch.nn.functional as F

from okd_ray.engines.local import LocalEngine
from okd_ray.methods import distill_kl
from okd_ray.population import plan_population, population_step

FFL = [
    "method.name=ffl", "method.ffl.rampup_epochs=0", "members=[{arch: cnn16}, {arch: cnn32}, {arch: resnet8}]",
    "members.0.optimizer.weight_decay=0", "members.1.optimizer.weight_decay=0", "members.2.optimizer.weight_decay=0",
]


def engine(config):
    e = LocalEngine(config, plan_population(config))
    e.begin_epoch(0)
    return e


def test_ffl_step_equals_one_joint_backward(tiny_config):
    """Our split computation (fusion apart, gradients sent back) against FFL's loss in a single graph."""
    config = tiny_config(*FFL)
    split, joint = engine(config), engine(config)
    population_step(split.members, split.fusion, config.method.spec)

    x, y = next(iter(joint.members[0].dataset.train_batches(0)))
    maps, logits = zip(*(m.net(x) for m in joint.members))
    fused = joint.fusion.module(list(maps))
    ensemble = torch.stack(logits).mean(0)
    t = config.method.ffl.temperature
    loss = F.cross_entropy(fused, y) + distill_kl(fused, ensemble, t)
    for z in logits:
        loss = loss + F.cross_entropy(z, y) + distill_kl(z, fused, t)
    loss.backward()

    for a, b in zip(split.members, joint.members):
        for (name, pa), pb in zip(a.net.named_parameters(), b.net.parameters()):
            assert pa.grad is not None, name
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=f"{a.name}.{name}")
    for pa, pb in zip(split.fusion.module.parameters(), joint.fusion.module.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


def test_fused_loss_gradient_reaches_members(tiny_config):
    """With the fusion's gradient the members' first layer moves differently than without it."""
    config = tiny_config(*FFL)
    with_fusion, without = engine(config), engine(config)
    for e, keep in ((with_fusion, True), (without, False)):
        labels, maps, public, logits = zip(*(m.forward() for m in e.members))
        _, fused, *grads = e.fusion.step(labels[0], *maps, *logits)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
        for m, g in zip(e.members, grads):
            m.update(None, fused, g if keep else None)
    for a, b in zip(with_fusion.members, without.members):
        first_a, first_b = next(a.net.parameters()), next(b.net.parameters())
        assert not torch.allclose(first_a, first_b)


def test_exchanged_tensors_are_detached(tiny_config):
    config = tiny_config("method.name=afd+ffl", "members=[{arch: cnn16}, {arch: cnn32}]")
    e = engine(config)
    labels, maps, public, logits = zip(*(m.forward() for m in e.members))
    for t in maps + public + logits:
        assert t is not None and not t.requires_grad
    metrics, fused, *grads = e.fusion.step(labels[0], *maps, *logits)
    assert not fused.requires_grad and not any(g.requires_grad for g in grads)


@pytest.mark.parametrize("update", ["alternating", "joint"])
def test_afd_member_terms(tiny_config, update):
    config = tiny_config("method.name=afd", f"method.afd.update={update}", "members=[{arch: cnn32}, {arch: resnet8}]")
    e = engine(config)
    member_metrics, fusion_metrics = population_step(e.members, e.fusion, config.method.spec)
    assert fusion_metrics is None
    for m in member_metrics:
        assert {"ce", "kl_peer", "adv_g", "disc"} <= set(m)
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    # heterogeneous members meet through a learned transfer layer
    assert any(not isinstance(m.transfer, torch.nn.Identity) for m in e.members)
    assert ("feature" in e.members[0].optimizers) == (update == "alternating")


def test_ring_sends_each_member_its_predecessor(tiny_config):
    """population_step wires member k to member k-1's public map and logits (k=0 to the last)."""
    config = tiny_config("method.name=afd", "members=[{arch: cnn16}, {arch: cnn16}, {arch: cnn16}]")
    e = engine(config)
    sent, received = {}, {}
    for k, m in enumerate(e.members):
        forward, update = m.forward, m.update

        def recording_forward(k=k, forward=forward):
            out = forward()
            sent[k] = out
            return out

        def recording_update(peer_map, fused, grad, *peers, k=k, update=update):
            received[k] = (peer_map, peers)
            return update(peer_map, fused, grad, *peers)

        m.forward, m.update = recording_forward, recording_update
    population_step(e.members, e.fusion, config.method.spec)
    for k in range(3):
        peer_map, peers = received[k]
        _, _, prev_public, prev_logits = sent[(k - 1) % 3]
        assert peer_map is prev_public and len(peers) == 1 and peers[0] is prev_logits


def test_parts_send_detached_contiguous_tensors(tiny_config):
    """A pooled transfer map is a strided view; the part packs it, so no engine or transport repacks it."""
    config = tiny_config("method.name=afd+ffl", "members=[{arch: cnn16}, {arch: resnet8}]")
    e = engine(config)
    labels, maps, public, logits = zip(*(m.forward() for m in e.members))
    metrics, fused, *grads = e.fusion.step(labels[0], *maps, *logits)
    for t in (*maps, *public, *logits, fused, *grads):
        assert t.is_contiguous() and not t.requires_grad
