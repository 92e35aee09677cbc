"""Optimizers by name (okd_ray/optim.py): every torch.optim optimizer that can drive a network, the keywords each is
given, and fused kernels fed gradients of the layout they assume."""

import pytest
import torch

from okd_ray.config import load_config
from okd_ray.errors import ConfigError
from okd_ray.optim import OPTIMIZERS, OptimizerConfig, Stepper, make_optimizer
from okd_ray.precision import Precision


def test_every_optimizer_by_name_steps_a_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    for name in OPTIMIZERS:
        optimizer = make_optimizer(net.parameters(), OptimizerConfig(name=name, lr=0.01))
        before = [p.detach().clone() for p in net.parameters()]
        net(torch.randn(2, 1, 8, 8)).sum().backward()
        optimizer.step()
        net.zero_grad()
        assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters())), name


def test_the_keywords_each_optimizer_gets():
    """sgd and adam as before names were open (plus fused kernels), weight decay and betas where an optimizer takes
    them, momentum beyond sgd only where set, options as given."""
    keywords = lambda **kw: OptimizerConfig(**kw).keywords()  # noqa: E731
    assert keywords() == {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True, "fused": True}
    assert keywords(name="sgd", momentum=0) == {
        "lr": 0.1,
        "weight_decay": 5e-4,
        "momentum": 0,
        "nesterov": False,
        "fused": True,
    }
    assert keywords(name="adam", implementation="for-loop") == {
        "lr": 0.1,
        "weight_decay": 5e-4,
        "betas": (0.9, 0.999),
        "foreach": False,
    }
    assert keywords(name="rmsprop") == {"lr": 0.1, "weight_decay": 5e-4}
    assert keywords(name="rmsprop", momentum=0.5, options={"centered": True}) == {
        "lr": 0.1,
        "weight_decay": 5e-4,
        "momentum": 0.5,
        "centered": True,
    }
    assert keywords(name="nadam", implementation="foreach")["foreach"] is True


@pytest.mark.parametrize(
    "override, says",
    [
        ("members.0.optimizer.name=adamx", "members.0.optimizer.name: unknown optimizer 'adamx'; did you mean adamax"),
        ("members.0.optimizer.name=lbfgs", "members.0.optimizer.name: unknown optimizer 'lbfgs'"),
        ("members.0.optimizer.options={eps: 0.1}", "members.0.optimizer: options: torch.optim.SGD has no keyword eps"),
        ("members.0.optimizer.options={lr: 0.1}", "torch.optim.SGD has no keyword lr that options may set"),
        ("members.0.optimizer={name: nadam, implementation: fused}", "torch.optim.NAdam has no fused implementation"),
    ],
)
def test_a_wrong_optimizer_names_the_key_and_the_choices(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, ["members=[{arch: cnn16}, {arch: cnn32}]", override])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_fused_step_is_the_same_whatever_the_gradients_strides(name):
    """A conv weight's gradient from autograd.grad, or a compiled backward's, may have other strides than the weight.
    torch's fused CPU kernels misread it (SGD moved the weight 0.5 where the for-loop moved it 1e-4); every part steps
    through ``Stepper``, which hands them the parameter's layout."""
    weight = torch.randn(8, 4, 3, 3)
    grad = torch.randn(8, 3, 3, 4).permute(0, 3, 1, 2)  # the values of a (8, 4, 3, 3) gradient, channels-last strides
    stepped = {}
    for implementation, layout in (
        ("fused", torch.preserve_format),
        ("fused", torch.contiguous_format),
        ("for-loop", torch.preserve_format),
    ):
        p = torch.nn.Parameter(weight.clone())
        optimizer = make_optimizer([p], OptimizerConfig(name=name, implementation=implementation))
        for _ in range(2):
            p.grad = grad.clone(memory_format=layout)
            Stepper(Precision("fp32", torch.device("cpu"))).step(optimizer)
        stepped[implementation, layout] = p.detach()
    assert torch.equal(stepped["fused", torch.preserve_format], stepped["fused", torch.contiguous_format])
    # fused Adam rounds apart from the for-loop by an ulp or so (no gradient misread: that moved it by 0.2)
    torch.testing.assert_close(
        stepped["fused", torch.preserve_format], stepped["for-loop", torch.preserve_format], rtol=0, atol=1e-6
    )
