"""No host sync in the step: every part keeps its step's values on its device and reads them once, when the epoch
ends (a read waits for every kernel queued before it, so one per step stalls a GPU's queue)."""

import math

import pytest
import torch

from okd_ray.engines.local import LocalEngine
from okd_ray.errors import TrainingDiverged
from okd_ray.population import epoch_metrics, plan_population, population_step
from okd_ray.population.host import HostSyncs
from okd_ray.population.protocol import EpochLog

RESNETS_ON_A_TRUNK = ["members=[resnet8, resnet8, resnet8]", "trunk_stages=2"]
POPULATIONS = {
    "afd+ffl": ["method.name=afd+ffl"],  # a discriminator's step after the update, the fusion part
    "one-on-a-trunk": ["method.name=one", *RESNETS_ON_A_TRUNK],  # the trunk, its gate
    "pcl-on-a-trunk": ["method.name=pcl", *RESNETS_ON_A_TRUNK],  # peer messages, temporal means, a trunk hook
}


def test_host_syncs_counts_every_read_of_a_value():
    x = torch.arange(3.0)
    with HostSyncs() as syncs:
        y = x * 2 + torch.isfinite(x).all()  # stays a tensor: no read
        y.sum().item(), y.tolist(), bool(y[0] > 0), float(y[1]), int(y[2])
    assert syncs.count == 5


@pytest.mark.parametrize("population", POPULATIONS)
def test_a_step_reads_nothing_and_an_epoch_reads_once_per_part(tiny_config, population):
    config = tiny_config(*POPULATIONS[population], "data.batch_size=16", "threads=1")
    engine = LocalEngine(config, plan_population(config))
    engine.begin_epoch(0)
    with HostSyncs() as syncs:
        for _ in range(3):
            population_step(engine.population)
    assert syncs.count == 0
    with HostSyncs() as syncs:
        logs = [part.end_epoch() for part in engine.parts]
    reporting = [part for part, log in zip(engine.parts, logs) if any(log.steps)]  # a trunk reports nothing
    assert syncs.count == len(reporting) and all(len(log.steps) == 3 for log in logs)
    steps = epoch_metrics(logs)
    assert all(math.isfinite(v) for step in steps for part in step for v in part.values())


def test_the_earliest_step_that_diverged_is_named_and_of_it_the_first_part():
    def diverged(part, step):
        return TrainingDiverged(part, "ce", math.nan, 1, step, ("members.0.optimizer.lr",))

    logs = [
        EpochLog([{}] * 5, diverged("m0", 4)),
        EpochLog([{}] * 5, diverged("m1", 2)),
        EpochLog([{}] * 5, diverged("fused", 2)),
    ]
    with pytest.raises(TrainingDiverged) as err:
        epoch_metrics(logs)
    assert (err.value.part, err.value.step) == ("m1", 2)
