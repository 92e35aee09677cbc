"""Every experiment script still imports: a script is run rarely, so a renamed helper would go unnoticed."""

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_experiment_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))  # as `python experiments/NAME.py` runs it: siblings import
    spec = importlib.util.spec_from_file_location(script.stem, script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
