"""How parts execute (okd_ray/execution.py): compile's settings, a model torch.compile cannot compile, checkpoints
of compiled and channels_last runs loading as plain modules. That the engines stay bit-identical compiled and in
channels_last, and how far either lies from eager, is tests/engines/test_ray.py's."""

import re

import pytest

from okd_ray.config import load_config
from okd_ray.errors import CompileFailed, ConfigError
from okd_ray.run import train
from okd_ray import load_model

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


@pytest.mark.parametrize("value, expected", [(True, {"mode": "default", "dynamic": False}), (False, None),
                                             ({"mode": "max-autotune"}, {"mode": "max-autotune", "dynamic": False})])
def test_compile_is_a_switch_or_torch_compiles_settings(value, expected):
    config = load_config(None, [f"compile={str(value).lower() if isinstance(value, bool) else value}"])
    assert (config.compile.model_dump() if config.compile else None) == expected


@pytest.mark.parametrize("override, says", [("compile=fast", "compile: give true, false or {mode: default"),
                                            ("compile={mod: default}", "compile.mod: unknown key; did you mean mode?"),
                                            ("memory_format=nhwc", "memory_format: Input should be 'contiguous' or")])
def test_a_wrong_compile_or_memory_format_names_the_key(override, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, [override])


@pytest.fixture(scope="module")
def uncompilable(plugin_file):
    return plugin_file("uncompilable.py", UNCOMPILABLE)


def test_a_model_torch_compile_cannot_compile_is_one_message_naming_the_part_and_the_fix(uncompilable, okd_ray,
                                                                                          tmp_path):
    result = okd_ray.run("train", f"plugins=[{uncompilable}]", "members=[shapeless, cnn16]", "compile=true",
                         "epochs=1", "data.train_limit=64", "data.batch_size=32", f"output_dir={tmp_path / 'runs'}",
                         "--quiet")
    okd_ray.assert_error(result, 2, "m0:shapeless: torch.compile could not compile its networks (TorchRuntimeError",
                         "no shape rule", "run eagerly with compile=false")


def test_on_ray_the_part_that_cannot_be_compiled_is_named_too(uncompilable, tiny_config, on_ray, tmp_path):
    config = tiny_config(f"plugins=[{uncompilable}]", "members=[cnn16, shapeless]", "compile=true", "epochs=1",
                         *on_ray)
    with pytest.raises(CompileFailed, match="m1:shapeless: torch.compile could not compile its networks"):
        train(config, run_dir=str(tmp_path / "run"), quiet=True)


def test_a_channels_last_run_loads_as_the_plain_model_it_trained(tiny_config, tmp_path):
    """The deployed model is contiguous, whatever the run computed in. (A compiled run's checkpoint holds the plain
    modules' keys: test_ray's tolerance test compares it with eager's key by key.)"""
    run = train(tiny_config("memory_format=channels_last", "epochs=1", "data.validation=0"),
                run_dir=str(tmp_path / "run"), quiet=True)
    model = load_model(run.run_dir, "m0")
    assert all(p.is_contiguous() for p in model.parameters())
    assert any(p.dim() == 4 for p in model.parameters())
