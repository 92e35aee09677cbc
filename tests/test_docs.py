"""What the README and the embedded default say about installing and running, checked against the project."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
DEFAULT = (ROOT / "okd_ray" / "configs" / "default.yaml").read_text()


def test_the_default_run_time_is_the_same_in_the_readme_and_in_default_yaml():
    readme = re.search(r"^okd-ray train +# the embedded default: .*?(\d+ s) on a (\d)-core CPU", README, re.M)
    default = re.search(r"^# .*?(\d+ s) on a (\d)-core CPU", DEFAULT, re.M)
    assert readme and default and readme.groups() == default.groups(), (readme, default)


def test_the_cpu_only_install_line_pins_the_torch_the_project_allows():
    line = next(line for line in README.splitlines() if "download.pytorch.org/whl/cpu" in line)
    pins = dict(re.findall(r"\b(torch|torchvision)==([\d.]+)", line))
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = dict(re.findall(r"^(torch|torchvision)>=[\d.]+,<=([\d.]+)", "\n".join(dependencies), re.M))
    assert pins == allowed and "--index-url https://download.pytorch.org/whl/cpu" in line


def test_the_readme_gives_afds_adam_rates_as_the_code_and_the_embedded_default_set_them():
    """It said Adam 2e-5 where the embedded default runs 2e-4."""
    from okd_ray.config import load_config
    from okd_ray.methods.adversarial import Adversarial

    code = load_config(None, ["method.feature_update={}", "method.terms.adversarial={}"])
    for config, rate, said in (
        (code, 2e-5, "(by default Adam 2e-5,"),
        (
            load_config(),
            2e-4,
            "The embedded default (`okd_ray/configs/default.yaml`), the "
            "Fashion-MNIST\n  configs and `tune-digits.yaml` set 2e-4",
        ),
    ):
        assert config.method.feature_update.optimizer.lr == rate
        assert config.method.settings(Adversarial.name).discriminator_optimizer.lr == rate
        assert said in README, said
