"""``okd-ray export``: a run's part (``okd_ray.load_model``) as a file another program loads, with a model card.

Every format is written with its own library (safetensors, ``torch.export``, ``torch.onnx`` with dynamo,
``torch.jit.trace``), then read back and run on a seeded check batch beside the loaded model: the largest
difference is written into ``model.json`` and the card. An export that does not read back, or whose logits differ by
more than ``AGREES`` (a bound far above the differences measured, ``experiments/export_tolerance.py``), is an error.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from okd_ray import __version__
from okd_ray.config import validate
from okd_ray.data.inputs import ModelInputs
from okd_ray.errors import ConfigError, ExportFailed, MissingExtra
from okd_ray.storage import RunStore
from okd_ray.trained.card import model_card
from okd_ray.trained.load import build_deployed, find_checkpoint, open_run, resolve_part

META = "model.json"
CARD = "MODEL_CARD.md"
CHECK_BATCH = 5  # not the tracing batch (2): the check runs the dynamic batch dimension too
AGREES = 1e-4  # the largest difference to load_model's logits, over the largest logit; safetensors: none
BATCH = torch.export.Dim("batch")
Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Format:
    file: str
    write: Callable[[nn.Module, torch.Tensor, Path], None]  # (model, example batch, file)
    read: Callable[[Path], Runner]  # the written file as a function of a batch
    needs: tuple[str, ...] = ()  # modules of an optional extra
    load: str = ""  # how a user loads it (for the card), {file} the file's name


def write_safetensors(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))


def read_safetensors(path: Path) -> Runner:
    return load_safetensors(str(path.parent))


def write_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: BATCH},)), str(path))


def read_pt2(path: Path) -> Runner:
    return torch.export.load(str(path)).module()


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: BATCH},),
        verbose=False,
    )


def read_onnx(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Traced: Python control flow is fixed as the example ran it (the fusion's pooling to a size, per model)."""
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; still asked for
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.save(torch.jit.trace(model, example), str(path))


def read_torchscript(path: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


FORMATS = {
    "safetensors": Format(
        "model.safetensors",
        write_safetensors,
        read_safetensors,
        load="okd_ray.load_safetensors(FOLDER)  # the weights, into the architecture in model.json",
    ),
    "pt2": Format("model.pt2", write_pt2, read_pt2, load="torch.export.load('{file}').module()"),
    "onnx": Format(
        "model.onnx",
        write_onnx,
        read_onnx,
        ("onnx", "onnxscript", "onnxruntime"),
        load="onnxruntime.InferenceSession('{file}').run(None, {{'images': x.numpy()}})[0]",
    ),
    "torchscript": Format(
        "model.torchscript.pt",
        write_torchscript,
        read_torchscript,
        load="torch.jit.load('{file}')  # traced: fixed control flow",
    ),
}


def load_safetensors(folder: str) -> nn.Module:
    """The model an ``okd-ray export --format safetensors`` wrote to ``folder`` (a folder or a URI): the architecture
    rebuilt from its ``model.json`` (the run's config and inputs) as ``load_model`` builds it, with its weights."""
    from safetensors.torch import load

    store = RunStore(folder)
    meta = json.loads(store.read_text(META))
    config = validate(meta["config"])
    model = build_deployed(config, ModelInputs.from_dict(meta["inputs"]).info, resolve_part(config, meta["part"]))
    model.load_state_dict(load(store.read_bytes(FORMATS["safetensors"].file)))
    return model


def export_model(run_dir: str, part: str, format: str, out: str, checkpoint: int | str = "last") -> dict:
    """Write part ``part`` of the run in ``run_dir`` as ``format`` into ``out`` (a folder or URI), with ``model.json``
    and ``MODEL_CARD.md``; returns what ``model.json`` holds."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    chosen = FORMATS[format]
    for module in chosen.needs:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"--format {format}", module, format)
    run = open_run(run_dir)
    pid = resolve_part(run.config, part)
    found = find_checkpoint(run.store, checkpoint)
    model = build_deployed(run.config, run.inputs.info, pid, run.store, found)
    info = run.inputs.info
    generator = torch.Generator().manual_seed(0)
    example, check = (
        torch.randn(n, info.in_channels, info.image_size, info.image_size, generator=generator)
        for n in (2, CHECK_BATCH)
    )
    meta = {
        "format": format,
        "file": chosen.file,
        "part": pid.name,
        "run": run.store.uri,
        "epoch": found.epoch,
        "okd_ray": __version__,
        "inputs": json.loads(run.inputs.to_json()),
        "config": run.config.model_dump(mode="json"),
    }
    instead = "safetensors exports any model" if format != "safetensors" else ""
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        folder = Path(tmp)
        (folder / META).write_text(json.dumps(meta, indent=1))
        try:
            chosen.write(model, example, folder / chosen.file)
            exported = chosen.read(folder / chosen.file)(check)
        except Exception as e:  # noqa: BLE001 - every exporter raises its own kinds; the reason is what matters
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            raise ExportFailed(pid.name, format, reason, instead) from None
        logits = model(check)
        difference, largest = (exported - logits).abs().max().item(), logits.abs().max().item()
        if difference > (AGREES * largest if format != "safetensors" else 0):
            raise ExportFailed(
                pid.name,
                format,
                f"its logits differ from okd_ray.load_model's by {difference:.3g} "
                f"(the largest is {largest:.3g}) on a check batch",
                instead,
            )
        # on a seeded N(0, 1) batch of CHECK_BATCH
        meta.update(max_abs_difference=difference, max_abs_logit=largest)
        (folder / META).write_text(json.dumps(meta, indent=1))
        (folder / CARD).write_text(model_card(run, pid, found, chosen.file, chosen.load, meta))
        target = RunStore(out)
        for path in sorted(folder.iterdir()):
            target.write_bytes(path.name, path.read_bytes())
    return meta
