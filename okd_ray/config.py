"""One validated config per experiment: YAML on disk, ``key=value`` overrides, errors that name the key."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from okd_ray.data.config import DataConfig
from okd_ray.errors import ConfigError, did_you_mean
from okd_ray.execution import CompileConfig, MemoryFormat
from okd_ray.methods import METHODS, TERMS, Method, Need, TermSettings
from okd_ray.models import MODELS, TORCHVISION_PREFIX, unknown_model
from okd_ray.optim import OptimizerConfig, ScheduleConfig
from okd_ray.plugins import load_plugins
from okd_ray.settings import Strict


class MemberConfig(Strict):
    arch: str
    optimizer: OptimizerConfig = OptimizerConfig()
    # Data parallel: D replicas, each on its share of every batch, their gradients averaged in replica order
    replicas: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _arch_alone(cls, value: Any) -> Any:
        """``members=[cnn16, resnet8]``: a member given by its architecture alone takes the default optimizer."""
        return {"arch": value} if isinstance(value, str) else value

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        """A registered model (plugins' too); a torchvision name (tv:) is checked when the model is built."""
        if name.startswith(TORCHVISION_PREFIX) or name in MODELS:
            return name
        raise ValueError(unknown_model(name))


class FeatureUpdateConfig(Strict):
    """How feature-map terms (AFD's adversarial term, L1/L2 alignment) update the network.

    ``alternating``: from one forward pass, the logit loss's and the feature loss's gradients are both
    taken before either optimizer steps; the logit optimizer (the member's) and this one then step.
    ``sequential``: the logit optimizer steps first, a second forward pass on the same batch follows, then
    this optimizer steps on the feature loss of the updated network. ``joint``: the member's optimizer
    steps once on the sum. The paper's "alternating" updates may mean either of the first two.
    """

    mode: Literal["alternating", "sequential", "joint"] = "alternating"
    # The one public AFD re-implementation's values: Adam 2e-5, milestones at half the logit ones.
    optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=2e-5, weight_decay=0.0, milestone_scale=0.5)


class TransferConfig(Strict):
    """Transfer layers bring members' maps of different shapes to the ring's common shape."""

    learn: bool = True  # false: members whose maps differ from the common shape are an error
    channels: int | None = Field(None, ge=1)  # None: the widest member's


class MethodConfig(Strict):
    name: str = "afd"
    # Each term's settings (``method.terms.<term>.<setting>``); the method's row gives the defaults. The
    # resolved config holds every term of the method; settings of other registered terms are checked and
    # left out, so one file can serve several methods.
    terms: dict[str, dict[str, Any]] = {}
    feature_update: FeatureUpdateConfig = FeatureUpdateConfig()
    transfer: TransferConfig = TransferConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_terms(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.get("name", "afd") not in METHODS:
            return raw  # an unknown name is reported by the name's own check
        terms = raw.get("terms") or {}
        if not isinstance(terms, dict):
            raise PydanticCustomError("terms", "method.terms: give a mapping of term names to settings")
        method = METHODS[raw.get("name", "afd")]
        errors = []
        for name, values in terms.items():
            if name not in TERMS:
                errors.append(
                    f"method.terms.{name}: unknown term; {did_you_mean(name, TERMS)}"
                    f"the terms of {method.name}: {', '.join(s.name for s in method.terms)}"
                )
            elif not isinstance(values, dict):
                errors.append(f"method.terms.{name}: give a mapping of settings, e.g. {{weight: 1.0}}")
        resolved = {}
        for spec in method.terms:
            errors += _settings_errors(spec.term.Settings, terms.get(spec.name), spec.defaults, spec.name)
            if not errors:
                resolved[spec.name] = spec.settings(terms.get(spec.name)).model_dump(mode="json")
        for name, values in terms.items():  # other methods' terms: checked, then left out
            if name in TERMS and name not in resolved and isinstance(values, dict):
                errors += _settings_errors(TERMS[name].Settings, values, {}, name)
        if errors:
            raise PydanticCustomError("terms", "\n  ".join(errors))
        return {**raw, "terms": resolved}

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; {did_you_mean(name, METHODS)}valid: {', '.join(METHODS)}")
        return name

    @property
    def method(self) -> Method:
        return METHODS[self.name]

    def settings(self, term: str) -> TermSettings:
        """The validated settings of one of the method's terms."""
        return TERMS[term].Settings.model_validate(self.terms[term])


def _settings_errors(model: type[BaseModel], values: dict | None, defaults: dict, term: str) -> list[str]:
    if values is not None and not isinstance(values, dict):
        return []  # reported above
    try:
        model.model_validate({**defaults, **(values or {})})
    except ValidationError as e:
        return [f"method.terms.{term}.{_line(err, model)}" for err in e.errors()]
    return []


class RayConfig(Strict):
    address: str | None = None  # None: start a local cluster (or use the one this process is connected to)
    transport: Literal["auto", "object_store", "compiled", "direct", "collective"] = "auto"
    num_cpus_per_member: float | None = Field(None, gt=0)  # None: up to 1, sharing the cluster's CPUs
    num_gpus_per_member: float | None = Field(None, ge=0)  # None: one GPU each when the cluster has GPUs
    num_cpus_fusion: float | None = Field(None, gt=0)  # None: as a member
    num_gpus_fusion: float = Field(0, ge=0)
    # How the parts' bundles spread over nodes: pack them (the default), spread them, or one part per node.
    placement: Literal["pack", "spread", "strict_spread"] = "pack"
    placement_timeout_s: float = Field(60, gt=0)  # how long to wait for a joined cluster to find room
    max_restarts: int = Field(2, ge=0)  # rebuilds from the last checkpoint after an actor dies
    # How long a population's actors (and its placement group) wait, once it ends, for this process's next
    # population to build its parts in them: a notebook's next run, a sweep's next trial. 0: stopped at once.
    keep_hosts_s: float = Field(120, ge=0)
    # How long the cluster's head may refuse connections (its GCS gone: ray stop, a crashed head) before the run
    # ends, saying what it kept and how to continue. 0: Ray's own wait (60 s, then the process ends).
    cluster_lost_s: float = Field(5, ge=0)


class TrainConfig(Strict):
    name: str | None = None  # labels the run and prefixes its folder; None: {data.name}-{method.name}
    seed: int = 0
    epochs: int = Field(10, ge=1)
    members: list[MemberConfig] = Field(min_length=1)
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    engine: Literal["local", "ray"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision in every part: autocast to bf16 or fp16 (fp16 with loss scaling, a GradScaler per part).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile every part's networks (members, the fusion, terms' modules, the trunk): false, true, or
    # {mode: default | reduce-overhead | max-autotune, dynamic: false}. The engines stay bit-identical; compiled
    # against eager rounds differently (README). Checkpoints hold the plain modules' state.
    compile: CompileConfig | None = None
    # The layout of every part's networks and input images: channels_last is faster for convolutions on most
    # hardware; the values are the same up to rounding.
    memory_format: MemoryFormat = "contiguous"
    # With replicas: batch norm normalises with the statistics of the whole batch, every replica's share (else
    # each replica's own share's, as DDP).
    sync_batchnorm: bool = False
    # torch threads of the local engine's process and of each Ray part. None: torch's default locally, and
    # in Ray as many as the part's whole CPUs. Equal thread counts make the engines bit-identical.
    threads: int | None = Field(None, ge=1)
    output_dir: str = "runs"  # a local folder or a pyarrow.fs URI (s3://, gs://)
    checkpoint_every: int = Field(1, ge=1)
    # A part's call (a step's share, an evaluation batch, a save) running longer than this many seconds is
    # reported by the part's name, where it runs: a plugin loss that never returns, say. 0: never.
    silent_part_s: float = Field(300, ge=0)
    # Trackers that get every epoch's metrics (per part) besides metrics.parquet (okd_ray/trackers): tensorboard
    # (events in the run folder's tensorboard/), mlflow (MLFLOW_TRACKING_URI, else the run folder's mlflow.db);
    # with log_every_steps=N, also every N training steps' loss terms.
    logging: list[Literal["tensorboard", "mlflow"]] = []
    log_every_steps: int = Field(0, ge=0)  # 0: epochs only
    ray: RayConfig = RayConfig()
    # okd-ray tune's search space ({dotted key: {uniform|loguniform|int|choice: ...}}); okd-ray train ignores it.
    search: dict[str, Any] | None = None

    # Members of one architecture share its stem and first N stages (FFL's official set-up, ONE's); 0: none.
    trunk_stages: int = Field(0, ge=0)
    # Modules or .py files that register terms and methods; imported before the config is validated,
    # in the driver, in every Ray actor (whose part spec holds their terms) and in every Tune trial.
    plugins: list[str] = []

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        """``compile: false`` is eager (None); ``true`` torch.compile's default settings."""
        if value is True or value is False or value is None:
            return {} if value else None
        if not isinstance(value, dict):
            raise ValueError(f"give true, false or {{mode: default, dynamic: false}}; got {value!r}")
        return value

    @property
    def run_name(self) -> str:
        """``name``, or what ran (``digits-ffl``): a run folder is named after the run it holds."""
        return self.name or f"{self.data.name}-{self.method.name}"

    @model_validator(mode="after")
    def _population_fits_method(self) -> TrainConfig:
        method = self.method.method
        if len(self.members) < method.min_members:
            raise PydanticCustomError(
                "population",
                f"members: method {method.name!r} needs at least {method.min_members} members, got "
                f"{len(self.members)}; add members or use method.name=vanilla",
            )
        if Need.GATE in method.needs and not self.trunk_stages:
            raise PydanticCustomError(
                "population",
                f"trunk_stages: method {method.name!r} gates branches on a shared trunk; set "
                "trunk_stages (e.g. trunk_stages=2 for CIFAR ResNets, as in ONE's code)",
            )
        if self.trunk_stages and len({m.arch for m in self.members}) != 1:
            raise PydanticCustomError(
                "population",
                f"trunk_stages: members sharing a trunk must have one architecture, got "
                f"{[m.arch for m in self.members]}; give every member the same arch, or set trunk_stages=0",
            )
        replicas = [m.replicas for m in self.members]
        if len(set(replicas)) > 1 and (method.needs or self.trunk_stages):
            raise PydanticCustomError(
                "population",
                f"members.N.replicas: replica r of a member exchanges with replica r of every part it "
                f"meets, so method {method.name!r} needs one replica count for every member, got {replicas}; give "
                "every member the same replicas (members exchanging nothing, as in vanilla, may differ)",
            )
        if self.sync_batchnorm and max(replicas) == 1:
            raise PydanticCustomError(
                "population",
                "sync_batchnorm: it synchronises batch norm over a member's replicas, and every member "
                "has one; set members.N.replicas (e.g. 2) or sync_batchnorm=false",
            )
        if self.data.augment_per_member and not self.data.augment:
            raise PydanticCustomError(
                "population",
                "data.augment_per_member: with data.augment=false there is no augmentation to draw per "
                "member, so it would change nothing; set data.augment=true (KDCL's recipe) or leave it false",
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
    check_file(p, f"config file {str(p)!r}", "give a YAML path, or none for the embedded default")
    return raw_from_text(p.read_text(), str(p))


def check_file(path: Path, what: str, fix: str) -> None:
    """Raise unless ``path`` is a file: ``what`` is not found, or is a folder (a run folder: how to continue it)."""
    if path.is_dir():
        run = (path / "config.yaml").is_file()
        raise ConfigError(
            f"{what} is a folder; "
            + (
                f"to continue the run it holds: okd-ray train --resume {path}; to train its config as a new run, give "
                f"{path / 'config.yaml'}"
                if run
                else f"{fix}"
            )
        )
    if not path.is_file():
        raise ConfigError(f"{what} not found; {fix}")


def raw_from_text(text: str, source: str) -> dict[str, Any]:
    raw = load_yaml(text, source) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return raw


def load_yaml(text: str, source: str, fix: str = "fix the YAML there") -> Any:
    """``yaml.safe_load``; a syntax error becomes one message naming ``source``, the line and the column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        context = (
            f" ({context}" + (f" from line {start.line + 1}, column {start.column + 1}" if start else "") + ")"
            if context
            else ""
        )
        raise ConfigError(f"{source}{where}: YAML syntax error: {problem}{context}; {fix}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` sets a nested key; values are parsed as YAML (``3``, ``1e-3``, ``[1, 2]``, ``null``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value, e.g. method.name=dml")
        if key.split(".")[0] == "search":
            raise ConfigError(
                f"override {item!r}: the search space is no override; put it in the config's "
                "search: mapping, or give okd-ray tune --space FILE"
            )
        set_dotted(raw, key, load_yaml(text, f"the value of override {item!r}", "quote it, or close its brackets"))
    return raw


def override(key: str, value: Any) -> str:
    """``key=value`` with the value in YAML flow syntax: what ``apply_overrides`` reads back as ``value``."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for key ``a.b.c``; list items are addressed by index (``members.1.arch``)."""
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not isinstance(node, (dict, list)):  # members.0 given as "cnn16", then members.0.optimizer.lr=...
            held = ".".join(parts[:i])
            raise ConfigError(
                f"{key}: {held} is {node!r}, which has no keys; write it as a mapping first, e.g. "
                f"{held}={{arch: {node}}}"
                if held.startswith("members.")
                else f"{key}: {held} is {node!r}, which has no keys; set {held} as a mapping first"
            )
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
    """Import the config's plugins, then validate the raw mapping; every problem names its dotted key."""
    raw = {**raw, "plugins": load_plugins(raw.get("plugins") or [])}
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe(e)) from None


def describe(error: ValidationError) -> str:
    lines = [
        err["msg"] if err["type"] in ("terms", "population") else _line(err, TrainConfig) for err in error.errors()
    ]
    return "invalid config:\n  " + "\n  ".join(lines)


def _line(err: dict, root: type[BaseModel]) -> str:
    """``dotted.key: message`` for one pydantic error; an unknown key lists the valid ones, closest first."""
    key = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] != "extra_forbidden":
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    parent: type[BaseModel] | None = root
    for p in err["loc"][:-1]:
        if isinstance(p, str) and parent is not None:
            field = parent.model_fields.get(p)
            ann = field.annotation if field else None
            parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else _list_item(ann)
    if parent is None:
        return f"{key}: unknown key"
    return (
        f"{key}: unknown key; {did_you_mean(str(err['loc'][-1]), parent.model_fields)}"
        f"valid keys here: {', '.join(parent.model_fields)}"
    )


def _list_item(annotation: Any) -> type[BaseModel] | None:
    args = getattr(annotation, "__args__", ())
    return args[0] if args and isinstance(args[0], type) and issubclass(args[0], BaseModel) else None


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML that ``okd-ray train`` runs as it is."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
