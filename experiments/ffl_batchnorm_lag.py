"""Why the fused classifier of the README's FFL example (``okd-ray train method.name=ffl members.1.arch=resnet8
data.train_limit=500``) tests far below its training accuracy in its first epochs: after every epoch, the test
accuracy with the run's batch-norm running statistics, against the same weights with the statistics recomputed on
the training images (a cumulative average over every training batch; the members' maps as the test set reaches
the fusion, their networks in eval mode). Prints a Markdown table; extra arguments are config overrides
(``epochs=2`` gives the issue's run).

    python experiments/ffl_batchnorm_lag.py threads=1
"""

import sys
import tempfile

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from okd_ray.checkpoint import read_manifest
from okd_ray.config import load_config
from okd_ray.engines.local import LocalEngine
from okd_ray.population import plan_population
from okd_ray.run import train
from okd_ray.storage import RunStore


def recomputed(engine: LocalEngine, parts: list) -> dict:
    """The test accuracies with the batch-norm statistics of ``parts`` recomputed on the training images."""
    for module in (m for part in parts for mod in part.modules.values() for m in mod.modules()):
        if isinstance(module, _BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average
    members, fusion = engine.parts[:-1], engine.parts[-1]
    with torch.no_grad():
        for images, _, _ in engine.plan.dataset.train_batches(0):
            maps = [member.deployed.train(member in parts)(images)[0] for member in members]
            for module in fusion.modules.values():
                module.train(fusion in parts)
            fusion.fuser.eval(maps)
    return engine.evaluate("test")  # begin_eval: every part back in eval mode


def main() -> None:
    config = load_config(None, ["method.name=ffl", "members.1.arch=resnet8", "data.train_limit=500", *sys.argv[1:]])
    folder = tempfile.mkdtemp()
    store = RunStore(folder)

    def after(epoch: int, rows: list[dict], saved: bool) -> None:
        row = {r["part"]: r for r in rows}
        engine = LocalEngine(config, plan_population(config))
        engine.load(store, read_manifest(store).latest)
        fusion = recomputed(engine, engine.parts[-1:])
        engine.load(store, read_manifest(store).latest)
        every = recomputed(engine, engine.parts)
        members = [p for p in row if p.startswith("m")]
        tested = {
            name: " / ".join(f"{accuracies[m]['test_top1']:.1f}" for m in members)
            for name, accuracies in (("run", row), ("recomputed", every))
        }
        print(
            f"| {epoch} | {epoch * engine.plan.num_train_batches} | {row['fused']['train_top1']:.1f} | "
            f"{row['fused']['test_top1']:.1f} | {fusion['fused']['test_top1']:.1f} | "
            f"{every['fused']['test_top1']:.1f} | {tested['run']} | {tested['recomputed']} |",
            flush=True,
        )

    print(
        "| epoch | steps | fused train@1 | fused test@1 | with the fusion's BN statistics recomputed | with every "
        "part's | members' test@1 | with their BN statistics recomputed |\n|---" + "|---" * 7 + "|"
    )
    train(config, run_dir=folder, quiet=True, on_epoch=after)


if __name__ == "__main__":
    main()
