"""One validated config per experiment: YAML on disk, ``key=value`` overrides, errors that name the key."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from okd_ray.errors import ConfigError
from okd_ray.methods import METHODS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(Strict):
    """Learning rate as a function of the epoch: recomputed each epoch, so resuming needs no scheduler state."""

    kind: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0)


class MemberConfig(Strict):
    arch: str
    optimizer: OptimizerConfig = OptimizerConfig()


class DataConfig(Strict):
    name: str = "digits"
    root: str | None = None
    download: bool = False
    batch_size: int = Field(64, ge=1)
    test_batch_size: int = Field(256, ge=1)
    augment: bool = True
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)


class AFDConfig(Strict):
    """AFD's adversarial term. Defaults follow the one public re-implementation, not verified paper values."""

    adv_weight: float = Field(1.0, ge=0)
    # "alternating": the logit loss and the feature loss get their own optimizer steps from one forward
    # pass (the paper's separate updates); "joint": one optimizer on their sum (DESIGN.md's step 4).
    update: Literal["alternating", "joint"] = "alternating"
    feature_optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=2e-5, weight_decay=0.0)
    disc_optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=2e-5, weight_decay=0.0)
    transfer: bool = True  # transfer layers for members whose maps differ in shape
    transfer_channels: int | None = Field(None, ge=1)


class FFLConfig(Strict):
    kl_weight: float = Field(1.0, ge=0)
    temperature: float = Field(3.0, gt=0)
    rampup_epochs: float = Field(80, ge=0)
    optimizer: OptimizerConfig = OptimizerConfig(weight_decay=1e-5)


class MethodConfig(Strict):
    name: str = "afd"
    kl_weight: float = Field(1.0, ge=0)  # of the peer logit KL (DML, AFD, L1/L2)
    temperature: float | None = Field(None, gt=0)  # None: the method's default (DML 1, AFD 3)
    align_weight: float = Field(1.0, ge=0)  # of the L1/L2 alignment baselines
    afd: AFDConfig = AFDConfig()
    ffl: FFLConfig = FFLConfig()

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
        return name

    @property
    def spec(self):
        return METHODS[self.name]

    @property
    def peer_temperature(self) -> float:
        return self.temperature if self.temperature is not None else self.spec.default_temperature


class RayConfig(Strict):
    address: str | None = None  # None: start a local cluster (or use the one this process is connected to)
    transport: Literal["auto", "object_store", "compiled"] = "auto"
    num_cpus_per_member: float | None = Field(None, gt=0)  # None: up to 1, sharing the cluster's CPUs
    num_gpus_per_member: float | None = Field(None, ge=0)  # None: one GPU each when the cluster has GPUs
    num_cpus_fusion: float | None = Field(None, gt=0)  # None: as a member
    num_gpus_fusion: float = Field(0, ge=0)
    placement_timeout_s: float = Field(60, gt=0)  # how long to wait for a joined cluster to find room
    max_restarts: int = Field(2, ge=0)  # rebuilds from the last checkpoint after an actor dies


class TrainConfig(Strict):
    name: str = "run"
    seed: int = 0
    epochs: int = Field(10, ge=1)
    members: list[MemberConfig] = Field(min_length=1)
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    engine: Literal["local", "ray"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch threads of the local engine's process and of each Ray part. None: torch's default locally, and
    # in Ray as many as the part's whole CPUs. Equal thread counts make the engines bit-identical.
    threads: int | None = Field(None, ge=1)
    output_dir: str = "runs"  # a local folder or a pyarrow.fs URI (s3://, gs://)
    checkpoint_every: int = Field(1, ge=1)
    ray: RayConfig = RayConfig()
    # okd-ray tune's search space ({dotted key: {uniform|loguniform|int|choice: ...}}); okd-ray train ignores it.
    search: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _population_fits_method(self) -> TrainConfig:
        spec = self.method.spec
        if len(self.members) < spec.min_members:
            raise PydanticCustomError(
                "population",
                f"method {self.method.name!r} needs at least {spec.min_members} members, got {len(self.members)}; "
                "add members or use method.name=vanilla",
            )
        return self


DEFAULT_CONFIG = "default.yaml"


def default_config_text() -> str:
    """The embedded default experiment (digits, two members, AFD), shipped inside the package."""
    return resources.files("okd_ray").joinpath("configs", DEFAULT_CONFIG).read_text()


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (or the embedded default), apply ``key=value`` overrides, validate."""
    return validate(apply_overrides(read_raw(path), overrides))


def parse_config(text: str, overrides: list[str] = (), source: str = "config") -> TrainConfig:
    return validate(apply_overrides(raw_from_text(text, source), overrides))


def read_raw(path: str | Path | None = None) -> dict[str, Any]:
    """A config file (or the embedded default) as an unvalidated mapping."""
    if path is None:
        return raw_from_text(default_config_text(), "the embedded default")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; give a YAML path, or none for the embedded default")
    return raw_from_text(p.read_text(), str(p))


def raw_from_text(text: str, source: str) -> dict[str, Any]:
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` sets a nested key; values are parsed as YAML (``3``, ``1e-3``, ``[1, 2]``, ``null``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value, e.g. method.name=dml")
        set_dotted(raw, key, yaml.safe_load(text) if text else None)
    return raw


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for key ``a.b.c``; list items are addressed by index (``members.1.arch``)."""
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{key}: {'.'.join(parts[:i])} has {len(node)} items; {part!r} is no index of it")
            part = int(part)
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if node is None:
                    raise ConfigError(f"{key}: {'.'.join(parts[: i + 1])} is empty; set it as a mapping first")


def validate(raw: dict[str, Any]) -> TrainConfig:
    """Validate a raw mapping; every problem names its dotted key."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe(e)) from None


def describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parent = TrainConfig
            for p in err["loc"][:-1]:
                if isinstance(p, str) and parent is not None:
                    field = parent.model_fields.get(p)
                    ann = field.annotation if field else None
                    parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else _list_item(ann)
            valid = ", ".join(parent.model_fields) if parent is not None else ""
            lines.append(f"{key}: unknown key" + (f"; valid keys here: {valid}" if valid else ""))
        else:
            key = "members" if err["type"] == "population" else key
            lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _list_item(annotation: Any) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", ())
    return args[0] if args and isinstance(args[0], type) and issubclass(args[0], BaseModel) else None


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML that ``okd-ray train`` runs as it is."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
