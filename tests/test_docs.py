"""What the README and the embedded default say about installing and running, checked against the project."""

import re
import tomllib
from pathlib import Path

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
