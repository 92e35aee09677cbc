"""What each part is built from: a spec the plan makes once from the validated config, so a part, in this
process or in its own actor, never sees the whole config nor validates it (or its terms' settings) again."""

from __future__ import annotations

from dataclasses import dataclass, replace

from okd_ray.config import FeatureUpdateConfig, TrainConfig
from okd_ray.data import DataInfo
from okd_ray.execution import CompileConfig, MemoryFormat
from okd_ray.methods import Fuser, Method, Need, Term, TermSettings, TrunkHook
from okd_ray.optim import OptimizerConfig, ScheduleConfig
from okd_ray.precision import PrecisionName

from .protocol import PartId, parts_of

Shape = tuple[int, int, int]


@dataclass(frozen=True, kw_only=True)
class PartSpec:
    pid: PartId
    seed: int  # the run's: each part's private RNG is derived from it and the part's own keys
    epochs: int  # the learning-rate schedules run over these
    schedule: ScheduleConfig
    members: int  # K: how many values a per-member message holds
    reads_data: bool  # the part draws batches from the data set itself (not a member on a trunk, fed by the trunk)
    info: DataInfo  # the data set's channels, classes and image size
    steps_per_epoch: int
    precision: PrecisionName
    compile: CompileConfig | None = None  # torch.compile's settings for every module of the part; None: eager
    memory_format: MemoryFormat = "contiguous"  # of its modules and the images it reads
    replicas: int = 1  # D: the part runs as D replicas, replica r on share r of every batch
    replica: int = 0  # which one this is (the plan's specs are replica 0's; ``replica_specs`` gives the others)
    sync_batchnorm: bool = False  # with replicas: batch norm on the whole batch's statistics

    @property
    def key(self) -> str:
        """The part's key, and a replica's besides the first: ``m0``, ``m0.r1`` (its checkpoint shard's name)."""
        return self.pid.key + (f".r{self.replica}" if self.replica else "")


@dataclass(frozen=True, kw_only=True)
class MemberSpec(PartSpec):
    arch: str
    optimizer: OptimizerConfig
    terms: tuple[tuple[type[Term], TermSettings], ...]  # the method's row, each with its validated settings
    needs: frozenset[Need]
    feature_update: FeatureUpdateConfig | None  # None: the joint update (no feature-map terms)
    trunk_stages: int  # > 0: the network is the branch after that many shared stages
    stream: int | None  # the member's own augmentation stream (data.augment_per_member), else the shared one
    shape: Shape  # its last feature map's
    common: Shape | None  # the ring's public map's, when feature maps are exchanged
    shapes: tuple[Shape, ...] = ()  # every member's last feature map, in member order (its terms' MemberInfo)

    @property
    def index(self) -> int:
        return self.pid.index


@dataclass(frozen=True, kw_only=True)
class FusionSpec(PartSpec):
    term: str  # the term that brings the fusion (FFL's fused_kl, OKDDip's attention_kl)
    fuser: type[Fuser]
    settings: TermSettings  # that term's: weight, ramp-up, temperature, fusion optimizer
    optimizer: OptimizerConfig  # with its learning rate resolved
    shapes: tuple[Shape, ...]  # every member's feature map


@dataclass(frozen=True, kw_only=True)
class TrunkSpec(PartSpec):
    arch: str
    optimizer: OptimizerConfig  # member 0's: all members share one architecture
    trunk_stages: int
    shape: Shape  # the shared features'
    gate: bool  # ONE's gate over the members
    streams: int  # 1, or one per member: each its own augmentation of the batch (data.augment_per_member)
    hooks: tuple[tuple[str, type[TrunkHook], TermSettings], ...]  # the terms' trunk hooks: term name, class, settings


def fusion_term(method: Method) -> type[Term]:
    """The term of ``method`` that brings the fusion part (checked where the run is planned: exactly one)."""
    return next(spec.term for spec in method.terms if spec.term.fuser is not None)


def part_specs(
    config: TrainConfig,
    info: DataInfo,
    shapes: list[Shape],
    common: Shape | None,
    trunk_shape: Shape | None,
    steps_per_epoch: int,
) -> list[PartSpec]:
    """Every part's spec, in ``parts_of`` order."""
    method = config.method
    common_fields = dict(
        seed=config.seed,
        epochs=config.epochs,
        schedule=config.schedule,
        members=len(config.members),
        info=info,
        steps_per_epoch=steps_per_epoch,
        precision=config.precision,
        compile=config.compile,
        memory_format=config.memory_format,
        sync_batchnorm=config.sync_batchnorm,
    )
    terms = tuple((spec.term, method.settings(spec.name)) for spec in method.method.terms)
    specs: list[PartSpec] = []
    for pid in parts_of(config):
        if pid.kind == "member":
            specs.append(
                MemberSpec(
                    pid=pid,
                    **common_fields,
                    replicas=config.members[pid.index].replicas,
                    reads_data=not config.trunk_stages,
                    arch=pid.arch,
                    optimizer=config.members[pid.index].optimizer,
                    terms=terms,
                    needs=method.method.needs,
                    feature_update=method.feature_update if method.method.has_feature_terms else None,
                    trunk_stages=config.trunk_stages,
                    stream=pid.index if config.data.augment_per_member else None,
                    shape=shapes[pid.index],
                    common=common,
                    shapes=tuple(shapes),
                )
            )
        elif pid.kind == "fused":
            term = fusion_term(method.method)
            settings = method.settings(term.name)
            optimizer = settings.fusion_optimizer
            if optimizer.lr is None:  # the members' base learning rate, as in FFL's code
                optimizer = optimizer.model_copy(update={"lr": config.members[0].optimizer.lr})
            specs.append(
                FusionSpec(
                    pid=pid,
                    **common_fields,
                    replicas=config.members[0].replicas,
                    reads_data=False,
                    term=term.name,
                    fuser=term.fuser,
                    settings=settings,
                    optimizer=optimizer,
                    shapes=tuple(shapes),
                )
            )
        else:
            specs.append(
                TrunkSpec(
                    pid=pid,
                    **common_fields,
                    replicas=config.members[0].replicas,
                    reads_data=True,
                    arch=config.members[0].arch,
                    optimizer=config.members[0].optimizer,
                    trunk_stages=config.trunk_stages,
                    shape=trunk_shape,
                    gate=Need.GATE in method.method.needs,
                    streams=len(config.members) if config.data.augment_per_member else 1,
                    hooks=tuple(
                        (term.name, term.trunk_hook, settings)
                        for term, settings in terms
                        if term.trunk_hook is not None
                    ),
                )
            )
    return specs


def replica_specs(specs: tuple[PartSpec, ...] | list[PartSpec]) -> list[list[PartSpec]]:
    """The parts of each shard: shard r holds replica r of every part that has more than r replicas (every part,
    where replicas are equal), in ``parts_of`` order."""
    return [
        [replace(spec, replica=r) for spec in specs if spec.replicas > r]
        for r in range(max(spec.replicas for spec in specs))
    ]
