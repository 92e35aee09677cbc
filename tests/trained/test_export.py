"""okd-ray export: every format read back by its own library gives the logits of okd_ray.load_model (safetensors
exactly, the compiled formats within the tolerances the README states), with a model card; and what cannot be."""

import importlib.util
import json

import onnxruntime
import pyarrow.parquet as pq
import pytest
import torch

import okd_ray
from okd_ray.errors import ConfigError, ExportFailed, MissingExtra
from okd_ray.trained.export import FORMATS, export_model

# The README's stated tolerances: the largest absolute difference to load_model's logits over the largest logit.
TOLERANCE = {"safetensors": 0.0, "pt2": 1e-6, "torchscript": 1e-6, "onnx": 2e-6}


def reader(format, folder):
    """The export as a user runs it, with the format's own library."""
    if format == "safetensors":
        return okd_ray.load_safetensors(str(folder))
    if format == "pt2":
        return torch.export.load(folder / "model.pt2").module()
    if format == "torchscript":
        return torch.jit.load(folder / "model.torchscript.pt")
    session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def assert_reloads(run_dir, part, format, folder):
    meta = export_model(run_dir, part, format, str(folder))
    model = okd_ray.load_model(run_dir, part)
    info = okd_ray.load_transform(run_dir).info
    x = torch.randn(7, info.in_channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        difference = (reader(format, folder)(x) - logits).abs().max().item()
    assert difference <= TOLERANCE[format] * logits.abs().max().item(), (part, format, difference)
    assert meta["max_abs_difference"] <= TOLERANCE[format] * meta["max_abs_logit"]
    return meta


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("part", ["m1:resnet8", "ensemble", "fused"])
def test_every_format_of_ffl_parts(ffl_run, tmp_path, part, format):
    assert_reloads(ffl_run, part, format, tmp_path)


@pytest.mark.parametrize(
    "run, part, format",
    [
        ("one_run", "teacher", "pt2"),
        ("one_run", "m1", "onnx"),
        ("pcl_run", "m0", "safetensors"),
        ("pcl_run", "fused", "torchscript"),
        ("afd_tv_replicas_bf16_run", "m1", "pt2"),
        ("afd_tv_replicas_bf16_run", "m1", "onnx"),
    ],
)
def test_trunks_temporal_means_and_torchvision(request, tmp_path, run, part, format):
    assert_reloads(request.getfixturevalue(run), part, format, tmp_path)


def test_the_model_card_and_model_json(ffl_run, tmp_path):
    meta = export_model(ffl_run, "fused", "pt2", str(tmp_path), checkpoint=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD.md", "model.json", "model.pt2"]
    assert json.loads((tmp_path / "model.json").read_text()) == meta
    assert (meta["part"], meta["epoch"], meta["config"]["method"]["name"]) == ("fused", 1, "ffl")
    card = " ".join((tmp_path / "MODEL_CARD.md").read_text().split())
    row = next(
        r for r in pq.read_table(f"{ffl_run}/metrics.parquet").to_pylist() if r["epoch"] == 1 and r["part"] == "fused"
    )
    for text in [
        "# digits-ffl: fused",
        "The fused classifier",
        "m0:cnn16, m1:resnet8",
        "trained by okd-ray 0.1.0 (ffl)",
        "epoch 1",
        "N×1×8×8",
        "(pixels / 16 − mean) / std",
        "N×10 logits",
        "torch.export.load('model.pt2')",
        "Data: digits, 10 classes;",
        "validation: 32",
        "Method ffl, 2 epochs",
        "seed 0",
        "fused_kl:",
        "okd-ray train config.yaml",
        " | ".join(f"{row[c]:.2f}" for c in ("val_top1", "val_top5", "test_top1", "test_top5")),
    ]:
        assert text in card, text


def test_what_cannot_be_exported(ffl_run, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--format tflite: choose one of safetensors, pt2, onnx, torchscript"):
        export_model(ffl_run, "m0", "tflite", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(
        MissingExtra,
        match=r"--format onnx needs onnxscript, which is not installed: pip install "
        r"'okd-ray\[onnx\]'",
    ):
        export_model(ffl_run, "m0", "onnx", str(tmp_path))
    assert not list(tmp_path.iterdir())


UNTRACEABLE = '''
from torch import nn

from okd_ray.models import register_model
from okd_ray.models.base import FeatureNet


class Branchy(FeatureNet):
    """Its forward branches on a value: torch.export cannot trace it."""

    def __init__(self, *, in_channels, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        feature = self.conv(x)
        if feature.mean() > 0:
            feature = feature.relu()
        return feature, self.fc(feature.mean((2, 3)))


register_model("branchy", Branchy)
'''


def test_a_plugin_model_torch_export_cannot_trace(trained, plugin_file, tmp_path):
    run = trained(f"plugins=[{plugin_file('branchy.py', UNTRACEABLE)}]", "method.name=vanilla", "members=[branchy]")
    with pytest.raises(ExportFailed) as error:
        export_model(run, "m0", "pt2", str(tmp_path / "pt2"))
    assert str(error.value).startswith("part m0:branchy cannot be exported to pt2: ")
    assert str(error.value).endswith("; safetensors exports any model")
    assert_reloads(run, "m0", "safetensors", tmp_path / "safetensors")
