"""A run folder's trained models: any member, the ensemble, the fused classifier or ONE's teacher as one eval-mode
module, built from the run's own parts and checkpoint shards (``population.deployed``), without its data set."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from okd_ray.checkpoint import MANIFEST, Checkpoint, read_manifest
from okd_ray.config import TrainConfig, parse_config
from okd_ray.data import DataInfo
from okd_ray.data.inputs import RECORD, ModelInputs
from okd_ray.errors import ConfigError, DataError, did_you_mean
from okd_ray.methods import Need
from okd_ray.population import PartId, build_part, load_dataset, parts_of
from okd_ray.population.deployed import Deployed, deploy
from okd_ray.population.plan import plan_parts
from okd_ray.population.spec import fusion_term
from okd_ray.runfolder import CONFIG
from okd_ray.storage import RunStore


@dataclass(frozen=True)
class TrainedRun:
    """A run folder as loading reads it."""

    store: RunStore
    config: TrainConfig  # as the run resolved it, its plugins imported
    inputs: ModelInputs


def open_run(run_dir: str) -> TrainedRun:
    store = RunStore(run_dir)
    if not store.exists(CONFIG):
        raise ConfigError(
            f"{run_dir}: no {CONFIG} there; give the folder of an okd-ray run (okd-ray train writes "
            "it when the first epoch ends)"
        )
    config = parse_config(store.read_text(CONFIG), source=store.path(CONFIG))
    return TrainedRun(store, config, read_inputs(store, config))


def read_inputs(store: RunStore, config: TrainConfig) -> ModelInputs:
    """The run's record, or for a run folder from before okd-ray kept one, what its data set says, where it loads."""
    if store.exists(RECORD):
        return ModelInputs.from_json(store.read_text(RECORD))
    try:
        return replace(ModelInputs.of(load_dataset(config.data, config.seed)), trained_with="")  # not recorded
    except DataError as e:
        raise DataError(
            f"{store.path(RECORD)} is missing (an older okd-ray's run did not record its inputs), and its "
            f"data set {config.data.name} does not load here to tell them ({e}); load the run where its "
            "data set is"
        ) from None


def find_checkpoint(store: RunStore, checkpoint: int | str = "last") -> Checkpoint:
    """The newest checkpoint (``last``), or the one of epoch ``checkpoint``."""
    manifest = read_manifest(store)
    if manifest is None:
        raise ConfigError(
            f"{store.uri} holds no checkpoint ({MANIFEST} is missing); give a run folder whose training "
            "saved one (every checkpoint_every epochs, and after the last epoch)"
        )
    if checkpoint == "last":
        return manifest.latest
    kept = {c.epoch: c for c in manifest.checkpoints}
    if checkpoint not in kept:
        raise ConfigError(
            f"checkpoint {checkpoint}: {store.uri} keeps the checkpoints of epochs "
            f"{', '.join(map(str, kept))}; give one of them, or last"
        )
    return kept[checkpoint]


def deployable(config: TrainConfig) -> dict[str, PartId]:
    """What a run can deploy, by name: each member (``m0``, and ``m0:cnn16``), the ensemble of two or more members,
    the fused classifier of a fusion that classifies (FFL's, PCL's peer ensemble) and ONE's gated teacher."""
    members = [pid for pid in parts_of(config) if pid.kind == "member"]
    names = {name: pid for pid in members for name in (pid.key, pid.name)}
    method = config.method.method
    combined = [
        ("fused", Need.FUSION in method.needs and fusion_term(method).fuser.classifies),
        ("ensemble", len(members) > 1),
        ("teacher", Need.GATE in method.needs),
    ]  # as metrics.parquet's rows
    return {**names, **{kind: PartId(kind) for kind, has in combined if has}}


def resolve_part(config: TrainConfig, part: str) -> PartId:
    parts = deployable(config)
    if part not in parts:
        whose = f"a run of {len(config.members)} members, method {config.method.name}"
        has = ", ".join(name for name, pid in parts.items() if name == pid.key)
        raise ConfigError(f"part {part!r}: {whose}, has no such part; {did_you_mean(part, parts)}its parts: {has}")
    return parts[part]


def build_deployed(
    config: TrainConfig,
    info: DataInfo,
    pid: PartId,
    store: RunStore | None = None,
    checkpoint: Checkpoint | None = None,
) -> Deployed:
    """The module of part ``pid``, from the parts it needs built as the run built them (replica 0 of each), with
    the shards of ``checkpoint`` in ``store`` loaded (None: as initialised, for weights loaded otherwise)."""
    _, _, specs = plan_parts(config, info, 0)  # the steps per epoch count only in training
    by_pid = {spec.pid: spec for spec in specs}
    members = [pid] if pid.kind == "member" else [p for p in by_pid if p.kind == "member"]
    trunk, fused = PartId("trunk"), PartId("fused")
    needed = [*members, *(p for p in (trunk, fused) if p in by_pid and (p == trunk or pid == fused))]
    plain = {p: replace(by_pid[p], compile=None, memory_format="contiguous") for p in needed}  # what a user deploys
    parts = {p: build_part(plain[p], torch.device("cpu"), None) for p in needed}
    if checkpoint is not None:
        for part in parts.values():
            part.load(store.address, checkpoint)
    return deploy(pid.kind, [parts[p] for p in members], parts.get(trunk), parts.get(fused))


def load_model(
    run_dir: str,
    part: str = "m0",
    checkpoint: int | str = "last",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Deployed:
    """Part ``part`` of the run in ``run_dir`` (a folder or a ``pyarrow.fs`` URI) with the weights of its last
    checkpoint (or of epoch ``checkpoint``), in eval mode: ``model(x)`` gives the logits the run's evaluation
    computes for a batch ``x`` normalised as ``load_transform(run_dir)`` does. ``part``: a member (``m0`` or
    ``m0:cnn16``), ``ensemble``, ``fused`` or ``teacher`` (ONE's). fp16 and bf16 runs load in float32 (their weights
    were float32; under ``torch.autocast`` to the run's precision it gives their evaluation's logits), ``dtype`` casts
    the weights."""
    run = open_run(run_dir)
    pid = resolve_part(run.config, part)
    found = find_checkpoint(run.store, checkpoint)
    return build_deployed(run.config, run.inputs.info, pid, run.store, found).to(device=device, dtype=dtype)


def load_transform(run_dir: str) -> ModelInputs:
    """How the run in ``run_dir`` made its networks' inputs: ``load_transform(run)(pixels)`` normalises a batch of
    pixel values as the run's data set did; ``.info`` holds the image size, channels and classes."""
    run = open_run(run_dir)
    if run.inputs.normalisation is None:
        raise DataError(
            f"data set {run.inputs.info.name} did not say how it normalises its images (a "
            "`normalisation` attribute of the data set); normalise them as its builder does"
        )
    return run.inputs
