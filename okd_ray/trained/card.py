"""The ``MODEL_CARD.md`` of an export: what the model is, what it takes, how it was trained and how well it did, read
from the run folder (its config, inputs record and ``metrics.parquet``)."""

from __future__ import annotations

import json

import yaml

from okd_ray import __version__
from okd_ray.checkpoint import Checkpoint
from okd_ray.population import PartId
from okd_ray.runfolder import CONFIG, METRICS
from okd_ray.trained.load import TrainedRun


def describe(run: TrainedRun, pid: PartId) -> str:
    members = ", ".join(f"m{k}:{m.arch}" for k, m in enumerate(run.config.members))
    return {
        "member": f"Member {pid.name} of the population {members}",
        "ensemble": f"The ensemble: the mean of the logits of {members}",
        "fused": f"The fused classifier: the fusion part's classifier on the feature maps of {members}",
        "teacher": f"ONE's gated teacher: the trunk's gate weighing the logits of {members}",
    }[pid.kind]


def accuracy_rows(run: TrainedRun, pid: PartId, epoch: int) -> list[str]:
    """The part's row of ``metrics.parquet`` at ``epoch``: validation (where held out) and test top-1 and top-5."""
    if not run.store.exists(METRICS):
        return [f"({METRICS} is missing from the run folder)"]
    row = next(
        (r for r in run.store.read_table(METRICS).to_pylist() if r["epoch"] == epoch and r["part"] == pid.name), {}
    )
    cells = [
        f"{row[c]:.2f}" if row.get(c) is not None else "–" for c in ("val_top1", "val_top5", "test_top1", "test_top5")
    ]
    return [
        "| validation top-1 | validation top-5 | test top-1 | test top-5 |",
        "|---|---|---|---|",
        f"| {' | '.join(cells)} |",
    ]


def model_card(run: TrainedRun, pid: PartId, checkpoint: Checkpoint, file: str, load: str, meta: dict) -> str:
    """``meta``: what the export's ``model.json`` holds (its format and the difference measured)."""
    config, info, norm = run.config, run.inputs.info, run.inputs.normalisation
    data = config.data
    size = f"{info.in_channels}×{info.image_size}×{info.image_size}"
    normalised = (
        f"`(pixels / {norm.max_value} − mean) / std` per channel, mean {list(norm.mean)}, std "
        f"{list(norm.std)}"
        + (f", after resizing the shorter side to {norm.resize} and centre-cropping" if norm.resize else "")
        if norm
        else "as the data set's builder normalises (it did not say how)"
    )
    members = "; ".join(
        f"m{k}: {m.arch}" + (f" ({m.replicas} replicas, exported as one)" if m.replicas > 1 else "")
        for k, m in enumerate(config.members)
    )
    settings = yaml.safe_dump(config.model_dump(mode="json")["method"], sort_keys=False).strip()
    lines = [
        f"# {config.run_name}: {pid.name}",
        "",
        f"{describe(run, pid)}, trained by okd-ray {run.inputs.trained_with or '(version not recorded)'} "
        f"({config.method.name}) and exported by okd-ray {__version__} as {meta['format']} (`{file}`) from the "
        f"checkpoint of epoch {checkpoint.epoch} of `{run.store.uri}`.",
        "",
        "## Input and output",
        "",
        f"- Input: a float32 batch N×{size} (any N), {normalised}; `okd_ray.load_transform(RUN)` does it.",
        f"- Output: N×{info.num_classes} logits, as the run's evaluation computes them.",
        f"- Load: `{load.format(file=file)}`.",
        f"- Checked on export: a seeded N(0, 1) batch of 5 through the file and through `okd_ray.load_model`: largest "
        f"absolute difference {meta['max_abs_difference']:.3g}, largest logit {meta['max_abs_logit']:.3g}.",
        "",
        "## Training",
        "",
        f"- Data: {data.name}, {info.num_classes} classes; "
        + ", ".join(
            f"{key}: {json.dumps(value)}"
            for key, value in data.model_dump(mode="json").items()
            if value is not None and key not in ("name", "root", "download", "num_workers")
        )
        + ".",
        f"- Population: {members}"
        + (f"; the first {config.trunk_stages} stages shared as a trunk" if config.trunk_stages else "")
        + ".",
        f"- Method {config.method.name}, {config.epochs} epochs, schedule {config.schedule.kind}, precision "
        f"{config.precision}, engine {config.engine}, seed {config.seed}. Its settings:",
        "",
        "```yaml",
        settings,
        "```",
        "",
        f"- Command: `okd-ray train {CONFIG}` with the run's resolved config, below (the same seed trains the same "
        "run on the same engine and thread count).",
        "",
        f"## Accuracy ({METRICS}, epoch {checkpoint.epoch}, in %)",
        "",
        *accuracy_rows(run, pid, checkpoint.epoch),
        "",
        f"## The run's {CONFIG}",
        "",
        "```yaml",
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)
