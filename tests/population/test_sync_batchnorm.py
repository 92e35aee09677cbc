"""Synchronised batch norm over a part's replicas (``sync_batchnorm: true``), held to plain batch norm on the
whole batch: the same outputs, gradients and running statistics up to rounding (the sums run in another order).
(Ray against local, bit for bit: tests/engines/test_ray.py.)"""

import copy

import pytest
import torch
from torch import nn

from okd_ray.config import load_config
from okd_ray.errors import ConfigError
from okd_ray.population.replicas import Baton, shard
from okd_ray.population.sync_batchnorm import SyncBatchNorm, synchronise_batchnorm
from okd_ray.run import train

CLOSE = dict(rtol=1e-12, atol=1e-12)  # float64: sums in another order


@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_normalise_and_learn_as_one_batch_norm_on_the_whole_batch(replicas):
    torch.manual_seed(0)
    whole = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None)).double()  # cumulative averages
    x = torch.randn(7, 3, 6, 6, dtype=torch.float64) * 3 + 1  # 7 does not divide: shares 3, 2, 2
    upstream = torch.randn(7, 4, 4, 4, dtype=torch.float64)
    copies = [copy.deepcopy(whole) for _ in range(replicas)]
    baton = Baton()
    meet = baton.rendezvous_for(replicas)
    layers = [net[1] for net in copies]
    for r, net in enumerate(copies):
        synchronise_batchnorm(net, lambda value, r=r: meet.gather(r, value), r)
    for net, layer in zip(copies, layers):  # the layer's own parameters and buffers, which its optimizer holds
        assert isinstance(net[1], SyncBatchNorm)
        assert net[1].weight is layer.weight and net[1].running_var is layer.running_var
    inputs = [shard((x,), r, replicas)[0].clone().requires_grad_() for r in range(replicas)]
    outputs = [None] * replicas

    def step(r: int) -> None:
        for _ in range(2):  # twice: the running statistics' cumulative average
            outputs[r] = copies[r](inputs[r])
        (outputs[r] * shard((upstream,), r, replicas)[0]).sum().backward()

    baton.run([lambda r=r: step(r) for r in range(replicas)])
    x_whole = x.clone().requires_grad_()
    for _ in range(2):
        y = whole(x_whole)
    (y * upstream).sum().backward()

    torch.testing.assert_close(torch.cat(outputs), y, **CLOSE)
    torch.testing.assert_close(torch.cat([i.grad for i in inputs]), x_whole.grad, **CLOSE)
    for name, param in whole.named_parameters():  # the replicas' gradients summed: the whole batch's
        torch.testing.assert_close(sum(dict(net.named_parameters())[name].grad for net in copies), param.grad, **CLOSE)
    for net in copies:
        torch.testing.assert_close(net[1].running_mean, whole[1].running_mean, **CLOSE)
        torch.testing.assert_close(net[1].running_var, whole[1].running_var, **CLOSE)
        assert net[1].num_batches_tracked == 2
        assert torch.equal(net[1].running_var, copies[0][1].running_var)  # the replicas' own: identical
    for net in copies:  # evaluation: the running statistics, as plain batch norm
        net.eval()
    whole.eval()
    torch.testing.assert_close(copies[1](x), whole(x), **CLOSE)


def test_a_member_on_replicas_learns_as_one_on_the_whole_batch(tiny_config, tmp_path, flat_state):
    """Two steps of a member as two replicas with synchronised batch norm against the same member alone."""
    common = ("method.name=vanilla", "epochs=1", "data.train_limit=64", "threads=1")
    runs = {}
    for replicas, extra in [(1, ()), (2, ("sync_batchnorm=true",))]:
        train(
            tiny_config(*common, f"members=[{{arch: cnn16, replicas: {replicas}}}]", *extra),
            run_dir=str(tmp_path / str(replicas)),
            quiet=True,
        )
        runs[replicas] = flat_state(
            torch.load(tmp_path / str(replicas) / "checkpoints" / "epoch-0001" / "m0.pt", weights_only=True)["modules"]
        )
    assert runs[1].keys() == runs[2].keys()
    for key in runs[1]:
        torch.testing.assert_close(runs[2][key], runs[1][key], rtol=1e-4, atol=1e-5, msg=key)


def test_sync_batchnorm_without_replicas_is_refused():
    with pytest.raises(ConfigError, match=r"sync_batchnorm: .* every member has one; set members.N.replicas"):
        load_config(None, ["sync_batchnorm=true"])
