"""PCL against the public re-implementation's loss (shaoeric/Peer-Collaborative-Learning-..., no official code),
written out here: one population step's gradients on every network and the peer ensemble, the temporal mean's
update, and the deployed network."""

import torch
import torch.nn.functional as F
from torch import nn

from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.methods import ema_decay
from okd_ray.population import plan_population, population_step

PCL = [
    "method.name=pcl",
    "members=[{arch: cnn16}, {arch: cnn32}, {arch: cnn16}]",
    "epochs=1",
    "data.train_limit=64",
    "data.test_limit=32",
    "data.batch_size=16",
    "threads=1",
    "method.terms.peer_ensemble_kl.rampup_epochs=0",
    "method.terms.peer_mean_kl.rampup_epochs=0",
    "method.terms.peer_ensemble_kl.fusion_optimizer.weight_decay=0",
    *(f"members.{k}.optimizer.weight_decay=0" for k in range(3)),
]


def kd_loss(pred, target, temperature=3.0):
    """src/losses/kd_loss.KDLoss.forward."""
    return (
        nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(pred / temperature, dim=1), F.softmax(target / temperature, dim=1)
        )
        * temperature
        * temperature
    )


def pm_loss(pred, targets):
    """src/losses/kd_loss.PMLoss.forward."""
    return sum(kd_loss(pred, t.detach()) for t in targets) / len(targets)


def loss_wrapper(outputs, means, en_output, y):
    """src/losses/loss_wrapper.LossWrapper.forward, rampup_weight 1: ``outputs`` each peer's (map, logits), ``means``
    each peer mean teacher's logits."""
    loss = F.cross_entropy(en_output, y)
    for k, (_, pred) in enumerate(outputs):
        loss = (
            loss
            + F.cross_entropy(pred, y)
            + kd_loss(pred, en_output.detach())
            + pm_loss(pred, [means[j] for j in range(len(means)) if j != k])
        )
    return loss


def assert_same_grads(split, joint):
    for a, b in zip(split, joint):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def engine(*overrides):
    config = load_config(None, [*PCL, *overrides])
    e = LocalEngine(config, plan_population(config))
    e.begin_epoch(0)
    return e


def test_one_pcl_step_has_the_reimplementations_gradients():
    split, joint = engine(), engine()
    population_step(split.population)

    members, fusion = joint.population.members, joint.population.fusion
    x, y, _ = next(iter(members[0].dataset.train_batches(0)))
    outputs = [m.net(x) for m in members]
    means = [m.terms[2].mean(x)[1] for m in members]  # the peer mean teachers (the step's first: the nets' copies)
    loss_wrapper(outputs, means, fusion.fuser.logits([f for f, _ in outputs]), y).backward()
    assert_same_grads(
        [*(m.net for m in split.population.members), split.population.fusion.modules["classifier"]],
        [*(m.net for m in members), fusion.modules["classifier"]],
    )


def test_the_temporal_mean_follows_the_network_and_is_what_is_evaluated():
    e = engine()
    member = e.population.members[0]
    mean = member.modules["mean_network"]
    population_step(e.population)  # step 0: the true average of one network is the network
    assert all(torch.equal(a, b) for a, b in zip(mean.parameters(), member.net.parameters()))
    before = [p.clone() for p in mean.parameters()]
    population_step(e.population)  # step 1: alpha = min(1 - 1/2, 0.999)
    alpha = ema_decay(1, 0.999)
    assert alpha == 0.5
    for m, b, live in zip(mean.parameters(), before, member.net.parameters()):
        torch.testing.assert_close(m, alpha * b + (1 - alpha) * live, rtol=0, atol=1e-7)
    assert member.deployed is mean and not any(p.requires_grad for p in mean.parameters())


ON_A_TRUNK = [
    "members=[{arch: resnet8}, {arch: resnet8}, {arch: resnet8}]",
    "trunk_stages=2",
    "data.name=synthetic-cifar100",
    "data.augment_per_member=true",
]  # the digits have no augmentation


def test_one_pcl_step_on_a_trunk_has_the_reimplementations_gradients():
    """PCL's own set-up: the peers share the low-level layers, each with its own augmentation of the batch.
    src/models/resnet.ResNet.forward(x1, x2, x3) runs the shared stages on each peer's images; the mean model (the
    temporal means of the shared stages and of each branch) runs on the same images."""
    split, joint = engine(*ON_A_TRUNK), engine(*ON_A_TRUNK)
    population_step(split.population)

    members, fusion, trunk = joint.population.members, joint.population.fusion, joint.population.trunk
    streams = [next(iter(trunk.dataset.train_batches(0, k))) for k in range(3)]
    y = streams[0][1]
    assert all(torch.equal(s[1], y) and not torch.equal(s[0], streams[0][0]) for s in streams[1:])  # own augmentations
    mean_trunk = trunk.modules["mean_trunk"]
    outputs = [m.net(trunk.net(x)) for m, (x, _, _) in zip(members, streams)]  # self.extract(x_k), branch k
    means = [m.terms[2].mean(mean_trunk(x))[1] for m, (x, _, _) in zip(members, streams)]
    loss_wrapper(outputs, means, fusion.fuser.logits([f for f, _ in outputs]), y).backward()
    population = split.population
    assert_same_grads(
        [population.trunk.net, *(m.net for m in population.members), population.fusion.modules["classifier"]],
        [trunk.net, *(m.net for m in members), fusion.modules["classifier"]],
    )
    # the step's update: the true average of one network is the network; the mean trunk is what evaluation runs
    stepped = population.trunk
    assert all(torch.equal(m, p) for m, p in zip(stepped.modules["mean_trunk"].parameters(), stepped.net.parameters()))
    assert stepped.deployed is stepped.modules["mean_trunk"]
    assert not any(
        torch.equal(m, p)
        for m, p in zip(stepped.modules["mean_trunk"].parameters(), trunk.net.parameters())
        if p.grad is not None and p.grad.abs().sum() > 0
    )  # it moved with the trunk's step
