"""How parts execute (okd_ray/execution.py): compile's settings, a model torch.compile cannot compile, checkpoints
of compiled and channels_last runs loading as plain modules. That the engines stay bit-identical compiled and in
channels_last, and how far either lies from eager, is tests/engines/test_ray.py's."""

import re

import pytest
import torch

from okd_ray import load_model
from okd_ray.config import load_config
from okd_ray.errors import CompileFailed, ConfigError
from okd_ray.run import train

UNCOMPILABLE = """
import torch
from functools import partial
from okd_ray.models import register_model
from okd_ray.models.cnn import SmallCNN


@torch.library.custom_op("okdtest::shapeless", mutates_args=())
def shapeless(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@shapeless.register_fake
def _(x):  # what torch.compile traces with: an op without a shape rule cannot be compiled
    raise RuntimeError("no shape rule")


class Shapeless(SmallCNN):
    def forward(self, x):
        return super().forward(shapeless(x))


register_model("shapeless", partial(Shapeless, width=8))
"""


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, {"mode": "default", "dynamic": False}),
        (False, None),
        ({"mode": "max-autotune"}, {"mode": "max-autotune", "dynamic": False}),
    ],
)
def test_compile_is_a_switch_or_torch_compiles_settings(value, expected):
    config = load_config(None, [f"compile={str(value).lower() if isinstance(value, bool) else value}"])
    assert (config.compile.model_dump() if config.compile else None) == expected


@pytest.mark.parametrize(
    "override, says",
    [
        ("compile=fast", "compile: give true, false or {mode: default"),
        ("compile={mod: default}", "compile.mod: unknown key; did you mean mode?"),
        ("memory_format=nhwc", "memory_format: Input should be 'contiguous' or"),
    ],
)
def test_a_wrong_compile_or_memory_format_names_the_key(override, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, [override])


@pytest.fixture(scope="module")
def uncompilable(plugin_file):
    return plugin_file("uncompilable.py", UNCOMPILABLE)


def test_a_model_torch_compile_cannot_compile_is_one_message_naming_the_part_and_the_fix(
    uncompilable, okd_ray, tmp_path
):
    result = okd_ray.run(
        "train",
        f"plugins=[{uncompilable}]",
        "members=[shapeless, cnn16]",
        "compile=true",
        "epochs=1",
        "data.train_limit=64",
        "data.batch_size=32",
        f"output_dir={tmp_path / 'runs'}",
        "--quiet",
    )
    okd_ray.assert_error(
        result,
        2,
        "m0:shapeless: torch.compile could not compile its networks (TorchRuntimeError",
        "no shape rule",
        "run eagerly with compile=false",
    )


def test_on_ray_the_part_that_cannot_be_compiled_is_named_too(uncompilable, tiny_config, on_ray, tmp_path):
    config = tiny_config(f"plugins=[{uncompilable}]", "members=[cnn16, shapeless]", "compile=true", "epochs=1", *on_ray)
    with pytest.raises(CompileFailed, match="m1:shapeless: torch.compile could not compile its networks"):
        train(config, run_dir=str(tmp_path / "run"), quiet=True)


def test_a_channels_last_run_loads_as_the_plain_model_it_trained(tiny_config, tmp_path):
    """The deployed model is contiguous, whatever the run computed in. (A compiled run's checkpoint holds the plain
    modules' keys: test_ray's tolerance test compares it with eager's key by key.)"""
    run = train(
        tiny_config("memory_format=channels_last", "epochs=1", "data.validation=0"),
        run_dir=str(tmp_path / "run"),
        quiet=True,
    )
    model = load_model(run.run_dir, "m0")
    assert all(p.is_contiguous() for p in model.parameters())
    assert any(p.dim() == 4 for p in model.parameters())


def test_compiling_a_part_keeps_every_module_compiled_after_an_identity_transfer_layer():
    """An nn.Identity (a transfer layer where the shapes already agree) gives dynamo an empty graph, after which
    torch 2.14.1 runs every compiled module of the process eagerly: the local engine then computed otherwise than
    Ray's parts. A module with nothing to compile is left as it is, so a new batch size still compiles anew."""
    from torch import nn
    from torch._dynamo.utils import counters

    from okd_ray.execution import CompileConfig, compile_modules

    torch._dynamo.reset()
    layer, transfer = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU()), nn.Identity()
    compile_modules([layer, transfer], CompileConfig())
    counters.clear()
    for n in (6, 5):
        transfer(layer(torch.randn(n, 4, 2, 2)))
    assert counters["stats"]["unique_graphs"] == 2  # one per batch size: the second was compiled, not run eagerly


def modules_and_inputs():
    """What afd+ffl's parts compute with (tests/engines/test_ray.py's compiled population: cnn16 and resnet8 on the
    digits, batches of 32), each with an input of its own: members' networks, a discriminator, the fusion module and
    a transfer layer. Random inputs: a trained map's ReLU zeros sit on the knife edge that the README describes."""
    from okd_ray.methods.adversarial import Discriminator
    from okd_ray.methods.fusion import FusionModule
    from okd_ray.methods.transfer import transfer_layer
    from okd_ray.models import build_model

    g = torch.Generator().manual_seed(0)
    images, maps = torch.randn(32, 1, 8, 8, generator=g), [torch.randn(32, 64, 2, 2, generator=g) for _ in range(2)]
    torch.manual_seed(0)
    return [
        (build_model("cnn16", in_channels=1, num_classes=10), lambda: [images.clone()]),
        (build_model("resnet8", in_channels=1, num_classes=10), lambda: [images.clone()]),
        (Discriminator(64, 2), lambda: [maps[0].clone()]),
        (FusionModule([(64, 2, 2), (64, 2, 2)], 10), lambda: [[m.clone() for m in maps]]),
        (transfer_layer((64, 2, 2), (128, 2, 2)), lambda: [maps[1].clone()]),
    ]


def outputs_and_gradients(module, inputs) -> list[torch.Tensor]:
    leaves = [t.requires_grad_() for t in torch.utils._pytree.tree_leaves(inputs)]
    out = torch.utils._pytree.tree_leaves(module(*inputs))
    sum(o.square().mean() for o in out).backward()
    return [o.detach() for o in out] + [t.grad for t in leaves] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize(
    "memory_format, compiled",
    [("channels_last", False), ("channels_last", True)],
    ids=["channels_last", "compiled-channels_last"],
)
def test_every_module_computes_as_eager_contiguous_up_to_rounding(memory_format, compiled):
    """Outputs, input gradients and parameter gradients of each module, against eager contiguous: measured here at
    most 4.6e-6 (relative, by norm; resnet8 compiled); the bound 5e-5 is far under what a wrong layout or a misread
    gradient gives (0.2 and more, test_optim.py). The compiled modules keep the plain state dict's keys."""
    import copy

    from okd_ray.execution import CompileConfig, as_input, compile_modules, to_format
    from okd_ray.population.outgoing import map_tensors

    for module, inputs in modules_and_inputs():
        reference = outputs_and_gradients(module, inputs())
        variant = copy.deepcopy(module)
        to_format([variant], memory_format)
        compile_modules([variant], CompileConfig() if compiled else None)
        images = map_tensors(inputs(), lambda x: as_input(x, torch.device("cpu"), memory_format))  # as a part does
        computed = outputs_and_gradients(variant, images)
        assert variant.state_dict().keys() == module.state_dict().keys()
        errors = [((a - b).norm() / a.norm()).item() for a, b in zip(reference, computed, strict=True)]
        assert max(errors) < 5e-5, (type(module).__name__, errors)
