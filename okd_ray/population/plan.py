"""Everything about a population that can be checked before any work starts."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from okd_ray.config import TrainConfig
from okd_ray.data import DATASETS, DataConfig, DataInfo, Dataset
from okd_ray.data.base import Split
from okd_ray.errors import ConfigError, ModelError
from okd_ray.methods import MemberInfo, Method, Need, Term, common_shape
from okd_ray.models import build_model, feature_shape
from okd_ray.models.base import PooledHeadNet
from okd_ray.optim import Stepper
from okd_ray.precision import Precision
from okd_ray.seeding import derive_seed

from .spec import MemberSpec, PartSpec, Shape, TrunkSpec, part_specs


@dataclass(frozen=True)
class PopulationPlan:
    """Shapes every part is built from: the data set's, each member's feature map, the ring's public map."""

    data: DataInfo
    shapes: list[Shape]
    common: Shape | None  # None when the method exchanges no feature maps
    num_train_batches: int
    num_eval_batches: dict[Split, int]  # the validation split's (0 without one) and the test set's
    specs: tuple[PartSpec, ...]  # what each part is built from, in parts_of order
    dataset: Dataset  # built once, here: the parts that read batches get this one (no part splits or loads again)

    @property
    def eval_splits(self) -> list[Split]:
        """What every epoch evaluates: the validation split where there is one, then the test set."""
        return [split for split in ("val", "test") if self.num_eval_batches[split]]


def load_dataset(data: DataConfig, seed: int) -> Dataset:
    """The run's data set; cached, so the runs of one process (a sweep's trials, a notebook's) load it once."""
    return _cached_dataset(json.dumps(data.model_dump(mode="json"), sort_keys=True), seed)


@functools.lru_cache(maxsize=4)
def _cached_dataset(data_json: str, seed: int) -> Dataset:
    data = DataConfig.model_validate(json.loads(data_json))
    return DATASETS[data.name](data, seed)


def plan_population(config: TrainConfig) -> PopulationPlan:
    """The run's data set, and every part's spec planned for it."""
    dataset = load_dataset(config.data, config.seed)
    check_replica_shares(config, dataset)
    shapes, common, specs = plan_parts(config, dataset.info, dataset.num_train_batches())
    num_eval = {split: dataset.num_eval_batches(split) for split in ("val", "test")}
    return PopulationPlan(dataset.info, shapes, common, dataset.num_train_batches(), num_eval, specs, dataset)


def plan_parts(
    config: TrainConfig, info: DataInfo, steps_per_epoch: int
) -> tuple[list[Shape], Shape | None, tuple[PartSpec, ...]]:
    """Each member's feature map, the ring's public map and every part's spec, from the data set's facts alone (a
    trained run's parts are built from them without its data). Builds each model once (on the CPU, RNG untouched)
    to learn its feature map, and checks the ring fits."""
    shapes, nets, trunk_shape = [], [], None
    for k, member in enumerate(config.members):
        with torch.random.fork_rng(devices=[]):
            try:
                net = build_model(member.arch, in_channels=info.in_channels, num_classes=info.num_classes)
            except ModelError as e:
                raise ConfigError(f"members.{k}.arch: {e}") from None
            shape = feature_shape(net, info.in_channels, info.image_size)
            if config.trunk_stages and k == 0:
                trunk_shape = _trunk_shape(net, config.trunk_stages, info)
        if len(shape) != 3:
            raise ConfigError(
                f"members.{k}.arch: {member.arch} yields a feature map of shape {shape}, not (C, H, W); "
                "pick a convolutional model, or one whose last feature map is 4-D"
            )
        shapes.append(tuple(shape))
        nets.append(net)
    common = None
    if Need.RING_MAP in config.method.method.needs:
        transfer = config.method.transfer
        common = common_shape(shapes, transfer.channels)
        mismatched = [k for k, s in enumerate(shapes) if s != common]
        if mismatched and not transfer.learn:
            raise ConfigError(
                f"method.transfer.learn: members {mismatched} have feature maps {[shapes[k] for k in mismatched]} "
                f"that differ from the ring's common shape {common}; set method.transfer.learn=true to learn "
                "transfer layers, or choose members whose last feature maps agree"
            )
    check_fusion(config.method.method)
    for term_spec in config.method.method.terms:  # each term's own check of the population, before any part
        term_spec.term.check(config)
    specs = tuple(part_specs(config, info, shapes, common, trunk_shape, steps_per_epoch))
    for spec in specs:  # the terms, built on the model just built (not a second one)
        if isinstance(spec, MemberSpec):
            check_terms(config.method.name, spec, branch(nets[spec.index], spec.trunk_stages))
        elif isinstance(spec, TrunkSpec):
            check_trunk_hooks(config.method.name, spec, nets[0].split(spec.trunk_stages)[0])
    return shapes, common, specs


def check_replica_shares(config: TrainConfig, dataset: Dataset) -> None:
    """Every replica's share of every training batch holds an image. Refused, not skipped: an empty share's mean
    loss is NaN, and every term, the fusion and batch norm would have to treat it apart (DDP's sampler never makes
    one: it repeats images until every replica has as many)."""
    batch = config.data.batch_size
    images = getattr(dataset, "num_train_images", lambda: None)()  # None: a plugin's data set that does not say
    last = batch if images is None else images - (dataset.num_train_batches() - 1) * batch
    for k, member in enumerate(config.members):
        if member.replicas > batch:
            raise ConfigError(
                f"members.{k}.replicas={member.replicas}: each replica takes a share of every batch, and "
                f"data.batch_size={batch} has only {batch} images to share; give members.{k}.replicas={batch} or "
                f"fewer, or a data.batch_size of {member.replicas} or more"
            )
        if member.replicas > last:
            fits = next(
                (b for b in range(batch, member.replicas - 1, -1) if images % b == 0 or images % b >= member.replicas),
                None,
            )
            raise ConfigError(
                f"members.{k}.replicas={member.replicas}: the last batch of every epoch holds {last} image(s) "
                f"({images} training images in batches of data.batch_size={batch}), too few for a share per "
                f"replica: a replica's share would be empty. Give a data.batch_size that leaves at least "
                f"{member.replicas}" + (f" (data.batch_size={fits})" if fits else "") + ", or another "
                "data.train_limit"
            )


def check_fusion(method: Method) -> None:
    """A method that needs the fusion part has exactly one term that brings it (``Term.fuser``)."""
    needers = [s.name for s in method.terms if Need.FUSION in s.term.needs]
    bringers = [s.name for s in method.terms if s.term.fuser is not None]
    if needers and len(bringers) != 1 or not needers and bringers:
        raise ConfigError(
            f"method {method.name}: terms {needers} need Need.FUSION and terms {bringers} bring a fusion part "
            "(Term.fuser); give the method exactly one term that brings it, e.g. FFL's FusedKL, and Need.FUSION with it"
        )


MEMBER_OWNS = {"module": ("net", "transfer"), "optimizer": ("logit", "feature")}  # see Member: its checkpoint keys


def member_network(spec: MemberSpec) -> torch.nn.Module:
    """The member's network: its whole model, or on a trunk the branch after the shared stages."""
    net = build_model(spec.arch, in_channels=spec.info.in_channels, num_classes=spec.info.num_classes)
    return branch(net, spec.trunk_stages)


def branch(net: torch.nn.Module, trunk_stages: int) -> torch.nn.Module:
    return net.split(trunk_stages)[1] if trunk_stages else net


def build_terms(spec: MemberSpec, network: torch.nn.Module, stepper: Stepper) -> list[Term]:
    """The member's terms, built from their validated settings (under the member's RNG, after its network)."""
    info = MemberInfo(
        spec.index,
        spec.members,
        spec.common,
        stepper.precision.device,
        spec.info.num_classes,
        spec.shape,
        derive_seed(spec.seed, "terms", spec.index),
        spec.steps_per_epoch,
        network,
        stepper,
        spec.shapes,
    )
    return [term(settings, info) for term, settings in spec.terms]


def check_terms(method: str, spec: MemberSpec, network: torch.nn.Module) -> None:
    """Build the method's terms for one member, as its part will (on the CPU, RNG untouched): a term that refuses
    the population says so now, before any part starts, and no two owners may share a module or optimizer name
    (a term's ``net`` would replace the member's network in its checkpoint)."""
    with torch.random.fork_rng(devices=[]):
        terms = build_terms(spec, network, Stepper(Precision(spec.precision, torch.device("cpu"))))
    check_names(method, "the member", "module", MEMBER_OWNS["module"], [(t.name, t.modules()) for t in terms])
    check_names(method, "the member", "optimizer", MEMBER_OWNS["optimizer"], [(t.name, t.optimizers()) for t in terms])


def check_trunk_hooks(method: str, spec: TrunkSpec, trunk: torch.nn.Module) -> None:
    """The terms' trunk hooks, built as the trunk part will: their modules' names are not the trunk's own."""
    with torch.random.fork_rng(devices=[]):
        hooks = [hook(settings, trunk, spec.steps_per_epoch) for _, hook, settings in spec.hooks]
    check_names(method, "the trunk", "module", ("net", "gate"), [(type(h).__name__, h.modules()) for h in hooks])


def check_names(method: str, part: str, kind: str, part_owns: tuple[str, ...], terms: list[tuple[str, dict]]) -> None:
    """No two owners in ``part`` share a ``kind`` (module, optimizer) name: the part's own, then each term's."""
    owner = dict.fromkeys(part_owns, part)
    for term, owned in terms:
        for name in owned:
            if name in owner:
                whose = f"{part}'s own name" if owner[name] == part else f"also term {owner[name]}'s"
                raise ConfigError(
                    f"method {method}: term {term}'s {kind} {name!r} is {whose}; rename it in {term}.{kind}s()"
                )
            owner[name] = term


def _trunk_shape(net, stages: int, info) -> Shape:
    """The shape of the shared features of ``net`` split after ``stages`` stages, by a dry run."""
    if not isinstance(net, PooledHeadNet):
        raise ConfigError(
            f"trunk_stages: {type(net).__name__} cannot be split into a trunk and branches; use an "
            "in-house model (resnet*, wrn-*, cnn*) or trunk_stages=0"
        )
    try:
        trunk, _ = net.split(stages)
    except ModelError as e:
        raise ConfigError(f"trunk_stages: {e}") from None
    with torch.no_grad():
        return tuple(trunk.eval()(torch.zeros(2, info.in_channels, info.image_size, info.image_size)).shape[1:])
