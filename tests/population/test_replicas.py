"""Replicas (``members.N.replicas``): each on its share of every batch, gradients averaged in replica order,
identical replicas; held to PyTorch's own DistributedDataParallel. (Ray against local: tests/engines/test_ray.py.)"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from okd_ray.checkpoint import read_manifest
from okd_ray.engines.local import LocalEngine
from okd_ray.population import plan_population
from okd_ray.population.protocol import EpochLog
from okd_ray.population.replicas import average, merge_replicas, shard
from okd_ray.run import train
from okd_ray.storage import RunStore


def test_a_batch_is_shared_out_and_a_mean_is_summed_in_replica_order():
    batch = (torch.arange(10.0), torch.arange(10))
    assert [len(shard(batch, r, 3)[0]) for r in range(3)] == [4, 3, 3]  # the first shares one larger
    assert torch.equal(torch.cat([shard(batch, r, 3)[1] for r in range(3)]), batch[1])
    values = [torch.tensor([0.1, 1e8]), torch.tensor([0.2, 1.0]), torch.tensor([0.3, -1e8])]
    mine = values[1].clone()
    average([mine], lambda value: values)
    assert torch.equal(mine, ((values[0] + values[1]) + values[2]) / 3)


def test_replicas_metrics_are_the_whole_batchs():
    logs = [
        EpochLog([{"ce": 1.0, "train_correct": 3.0, "n": 4}], None),
        EpochLog([{"ce": 4.0, "train_correct": 1.0, "n": 2}], None),
    ]
    assert merge_replicas(logs).steps == [{"ce": 2.0, "train_correct": 4.0, "n": 6}]


def test_replicas_stay_identical_and_a_checkpoint_holds_one_copy(tiny_config, tmp_path, flat_state):
    config = tiny_config(
        "method.name=afd+ffl",
        "members=[{arch: cnn16, replicas: 3}, {arch: cnn32, replicas: 3}]",
        "epochs=1",
        "data.train_limit=100",
        "threads=1",
    )  # a last batch of 4: shares 2, 1, 1
    engine = LocalEngine(config, plan_population(config))
    engine.begin_epoch(0)
    steps = engine.train_epoch(4, lambda: None)
    assert [step[0]["n"] for step in steps] == [32, 32, 32, 4]
    for i, pid in enumerate(engine.ids):
        first = flat_state(engine.replica(i, 0).state_dict())
        for r in (1, 2):
            other = flat_state(engine.replica(i, r).state_dict())
            different = [k for k in first if not torch.equal(first[k], other[k])]
            assert different == ["rng.cpu."], (pid, different)  # a stream of its own, the rest identical
    run = train(config, run_dir=str(tmp_path / "run"), quiet=True)
    shards = read_manifest(RunStore(run.run_dir)).latest.shards
    assert sorted(shards) == ["fused", "fused.r1", "fused.r2", "m0", "m0.r1", "m0.r2", "m1", "m1.r1", "m1.r2"]
    replica_shard = torch.load(tmp_path / "run" / "checkpoints" / "epoch-0001" / "m0.r1.pt", weights_only=True)
    assert list(replica_shard) == ["rng"]


def ddp_reference(rank: int, initial: dict, batches: list, lr: float, out: str) -> None:
    """Two processes, PyTorch's DistributedDataParallel over gloo: each its share of every batch, SGD as the
    member's (momentum 0.9, Nesterov, weight decay 5e-4), the plain cross-entropy."""
    from okd_ray.models import build_model

    dist.init_process_group("gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=2)
    torch.set_num_threads(1)
    net = build_model("cnn16", in_channels=1, num_classes=10)
    net.load_state_dict(initial)
    model = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for x, y, _ in batches:
        x, y = shard((x, y), rank, 2)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x)[1], y).backward()
        optimizer.step()
    if rank == 0:
        torch.save(net.state_dict(), out)
    dist.destroy_process_group()


def test_two_replicas_step_as_pytorch_ddp(tiny_config, tmp_path):
    config = tiny_config(
        "method.name=vanilla", "members=[{arch: cnn16, replicas: 2}]", "threads=1", "schedule={kind: constant}"
    )
    engine = LocalEngine(config, plan_population(config))
    member = engine.parts[0]
    initial = {k: v.clone() for k, v in member.net.state_dict().items()}
    batches = list(member.dataset.train_batches(0))[:2]
    engine.begin_epoch(0)
    engine.train_epoch(2, lambda: None)
    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_reference, args=(initial, batches, config.members[0].optimizer.lr, str(out)), nprocs=2)
    reference = torch.load(out, weights_only=True)
    for name, p in member.net.named_parameters():
        assert torch.equal(p, reference[name]), name
