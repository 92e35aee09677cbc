"""One population run, whatever the engine: epochs, evaluation, metrics, checkpoints, resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from okd_ray.checkpoint import MANIFEST, Checkpoint, commit, read_manifest, shard_folder
from okd_ray.config import TrainConfig, parse_config
from okd_ray.data.inputs import RECORD, ModelInputs
from okd_ray.engines import Engine, PartMetrics, make_engine, watching
from okd_ray.errors import CheckpointDamaged, ConfigError, Interrupted, PopulationLost, TrainingDiverged, signal_of
from okd_ray.lock import folder_lock
from okd_ray.metrics import digest, epoch_means, to_table
from okd_ray.population import PartId, PopulationPlan, parts_of, plan_population
from okd_ray.progress import RunDisplay
from okd_ray.runfolder import CONFIG, METRICS, check_resumable, check_same_run, start_over, write_config
from okd_ray.storage import RunStore
from okd_ray.terminal import warn
from okd_ray.trackers import Trackers, check_trackers


@dataclass
class RunResult:
    run_dir: str
    rows: list[dict]  # every epoch's rows, as in metrics.parquet
    seconds: float
    restarts: int = 0  # population rebuilds after a lost actor

    def final(self) -> dict[str, dict]:
        """The last epoch's row of each part (member, ensemble, fused)."""
        last = max(r["epoch"] for r in self.rows)
        return {r["part"]: r for r in self.rows if r["epoch"] == last}


def new_run_dir(config: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{config.output_dir.rstrip('/')}/{config.run_name}-{stamp}"


EpochCallback = Callable[[int, list[dict], bool], None]  # (epoch from 1, its rows, whether a checkpoint was saved)


def train(
    config: TrainConfig, run_dir: str | None = None, quiet: bool = False, on_epoch: EpochCallback | None = None
) -> RunResult:
    """Run ``config`` into ``run_dir`` (a new folder under ``output_dir`` by default), resuming if it holds a
    checkpoint. If an actor dies, the population is rebuilt from the last checkpoint, ``ray.max_restarts`` times.
    ``on_epoch`` sees every finished epoch (a Tune trial reports through it)."""
    plan = plan_population(config)  # every config error surfaces here, before any work
    store = RunStore(run_dir or new_run_dir(config))
    display = RunDisplay(quiet)
    with folder_lock(store, warn):
        check_same_run(store, config)
        check_resumable(store)
        check_trackers(config, store)
        with watching(config, lambda address, seconds: cluster_lost(store, address, seconds)):
            result = finished_run(config, store, display) or run_with_restarts(config, plan, store, display, on_epoch)
    display.message(f"run folder: {store.uri}")
    return result


def finished_run(config: TrainConfig, store: RunStore, display: RunDisplay) -> RunResult | None:
    """The run of ``store``, saying so, if its last checkpoint has every epoch ``config`` asks for: nothing
    starts. None otherwise."""
    manifest = read_manifest(store)
    latest = manifest.latest if manifest is not None else None
    if latest is None or latest.epoch < config.epochs:
        return None
    display.message(
        f"{store.uri} has finished: its last checkpoint holds all {latest.epoch} epochs "
        f"(epochs={config.epochs}), so there is nothing to train. To train it longer: okd-ray train "
        f"--resume {store.uri} epochs=N, with N > {latest.epoch}"
    )
    return RunResult(store.uri, [r for r in held_rows(store) if r["epoch"] <= latest.epoch], latest.elapsed)


def held_rows(store: RunStore) -> list[dict]:
    """The rows ``metrics.parquet`` of ``store`` holds (checked against the manifest by ``check_resumable``)."""
    return store.read_table(METRICS).to_pylist() if store.exists(METRICS) else []


def run_with_restarts(
    config: TrainConfig, plan: PopulationPlan, store: RunStore, display: RunDisplay, on_epoch: EpochCallback | None
) -> RunResult:
    """``run_epochs``, again from the last checkpoint each time an actor dies (``ray.max_restarts`` times)."""
    restarts = 0
    while True:
        try:
            result = run_epochs(config, plan, store, display, on_epoch)
        except PopulationLost as e:
            if restarts >= config.ray.max_restarts:
                raise PopulationLost(
                    f"{e}; gave up after {restarts} restarts (ray.max_restarts={config.ray.max_restarts}). "
                    f"Finished epochs are kept in {store.uri}: continue with okd-ray train --resume {store.uri}"
                ) from None
            restarts += 1
            display.message(f"{e}\nrestart {restarts}/{config.ray.max_restarts} from the last checkpoint")
            continue
        except ConfigError as e:
            if not restarts:
                raise
            raise ConfigError(
                f"{e}. Finished epochs are kept in {store.uri}: continue with okd-ray train --resume {store.uri}"
            ) from None
        result.restarts = restarts
        return result


def run_epochs(
    config: TrainConfig,
    plan: PopulationPlan,
    store: RunStore,
    display: RunDisplay,
    on_epoch: EpochCallback | None = None,
) -> RunResult:
    """Train from the last checkpoint in ``store`` (or from scratch) to ``config.epochs``. The config is written
    with this call's first results, so a run that fails to start leaves no folder behind."""
    start_epoch, rows, elapsed = 0, [], 0.0
    engine = trackers = None
    status = "failed"  # how the trackers see this attempt end
    try:
        display.message(
            f"training {config.run_name} into {store.uri}: epochs={config.epochs}, "
            f"{plan.num_train_batches} steps each, engine={config.engine}"
        )
        engine = make_engine(config, plan)
        resumed = load_checkpoint(engine, store)
        held = held_rows(store)
        if resumed is not None or held:  # held rows alone: the run stopped before its first checkpoint
            start_epoch, elapsed = (resumed.epoch, resumed.elapsed) if resumed is not None else (0, 0.0)
            rows = [r for r in held if r["epoch"] <= start_epoch]
            last = max((r["epoch"] for r in held), default=0)
            again = f" (epochs {start_epoch + 1} to {last} in {METRICS} are trained again)" * (last > start_epoch)
            where = (
                f"after epoch {start_epoch}"
                if start_epoch
                else "from epoch 1, as it stopped before its first checkpoint"
            )
            display.message(f"resuming {store.uri} {where}{again}")
        trackers = Trackers(config, store, start_epoch, plan.num_train_batches)
        for epoch in range(start_epoch, config.epochs):  # 0-based here; from 1 in metrics and on screen
            started = time.perf_counter()
            display.begin_epoch(epoch, config.epochs, plan.num_train_batches)
            lrs = engine.begin_epoch(epoch)
            try:
                steps = engine.train_epoch(plan.num_train_batches, display.advance)
            except TrainingDiverged as e:
                raise e.keeping(kept(store, "last good checkpoint")) from None
            trackers.log_steps(steps)
            train_stats = epoch_means([pid.name for pid in parts_of(config)], steps)
            eval_stats = merged(engine.evaluate(split) for split in plan.eval_splits)
            seconds = time.perf_counter() - started
            elapsed += seconds
            done = epoch + 1
            epoch_rows = make_rows(config, done, lrs, train_stats, eval_stats, seconds, elapsed)
            if epoch == start_epoch:  # the results below belong to this config; an earlier report is stale
                if engine.placement():
                    store.write_text("placement.json", json.dumps(engine.placement(), indent=1))
                store.delete("report")
                store.write_text(RECORD, ModelInputs.of(plan.dataset).to_json())  # what loading a model needs
                write_config(store, config)
            # The metrics first, then the shards, then the manifest that makes them a checkpoint: a kill anywhere
            # leaves the last checkpoint and at most this epoch's rows, which a resume trains again.
            table = to_table(rows + epoch_rows)
            store.write_table(METRICS, table)
            rows = table.to_pylist()  # as the file holds them: every column in every row
            epoch_rows = rows[-len(epoch_rows) :]
            trackers.log_epoch(done, epoch_rows)
            saved_now = done % config.checkpoint_every == 0 or done == config.epochs
            if saved_now:
                folder = shard_folder(done)
                commit(store, Checkpoint(done, elapsed, folder, engine.save(store, folder), digest(rows)))
            display.end_epoch(epoch, config.epochs, epoch_rows, seconds)
            if on_epoch is not None:
                on_epoch(done, epoch_rows, saved_now)
        status = "finished"
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        status = "interrupted"
        if not store.exists(CONFIG):
            if trackers is not None:
                trackers.discard()  # step values of an epoch that never ended
            raise Interrupted("interrupted before the first epoch ended; nothing was written", signal_of(e)) from None
        raise Interrupted(
            f"interrupted; {kept(store, 'last checkpoint')}; continue with: okd-ray train --resume {store.uri}",
            signal_of(e),
        ) from None
    finally:
        display.stop()
        if trackers is not None:
            trackers.close(status)
        if engine is not None:
            engine.close()
    return RunResult(store.uri, rows, elapsed)


def load_checkpoint(engine: Engine, store: RunStore) -> Checkpoint | None:
    """Load the newest intact checkpoint of ``store`` into the parts (None: a new run, or one stopped before its
    first checkpoint). A damaged newest one falls back to the one before it, saying so; with none intact the error
    names the damaged files."""
    manifest = read_manifest(store)
    if manifest is None or manifest.latest is None:
        return None
    damaged: list[tuple[Checkpoint, CheckpointDamaged]] = []
    for checkpoint in manifest.checkpoints:
        try:
            engine.load(store, checkpoint)
        except CheckpointDamaged as e:
            damaged.append((checkpoint, e))
            continue
        for bad, e in damaged:
            warn(
                f"{e}, so the checkpoint of epoch {bad.epoch} is unusable; resuming from the one of "
                f"epoch {checkpoint.epoch}: epochs {checkpoint.epoch + 1} to {bad.epoch} are trained again"
            )
        return checkpoint
    (_, first), earlier = damaged[0], damaged[1:]
    also = "".join(f"; the checkpoint of epoch {c.epoch} is unusable too ({e})" for c, e in earlier)
    raise CheckpointDamaged(
        first.path, first.problem, f"{also}; no intact checkpoint is left to resume from: {start_over(store)}"
    )


def cluster_lost(store: RunStore, address: str, seconds: float) -> str:
    return (
        f"the Ray cluster at {address} is gone: nothing has listened at its head's GCS port for {seconds:.0f} s "
        f"(ray stop, a head node that crashed); {kept(store, 'last checkpoint')}. Once a cluster runs again, "
        f"continue with: okd-ray train --resume {store.uri} (with --address where it is elsewhere)"
    )


def kept(store: RunStore, what: str) -> str:
    """Where the last checkpoint of ``store`` is and its epoch, or that there is none yet."""
    manifest = read_manifest(store)
    if manifest is not None and manifest.latest is not None:
        return f"the {what} (epoch {manifest.latest.epoch}) is kept in {store.path(MANIFEST)}"
    return "no checkpoint had been written yet (a resume starts from epoch 1)"


def resume(run_dir: str, overrides: list[str] = (), quiet: bool = False) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint (``epochs=N`` extends it)."""
    store = RunStore(run_dir)
    if not store.exists(CONFIG):
        raise ConfigError(f"--resume {run_dir}: no {CONFIG} there; give the folder of an earlier okd-ray run")
    config = parse_config(store.read_text(CONFIG), overrides, source=store.path(CONFIG))
    return train(config, run_dir, quiet)


def merged(stats: Iterable[PartMetrics]) -> PartMetrics:
    """Several evaluations' metrics (validation, test) as one per part."""
    out: PartMetrics = {}
    for each in stats:
        for part, values in each.items():
            out.setdefault(part, {}).update(values)
    return out


def make_rows(
    config: TrainConfig, epoch: int, lrs, train_stats, eval_stats, seconds: float, elapsed: float
) -> list[dict]:
    """One row per part, plus the ensemble's (and ONE's gated teacher's): every loss term, accuracy and learning
    rate it reported."""
    rows = []
    combined = [PartId(kind) for kind in ("ensemble", "teacher") if kind in eval_stats]
    for pid in [*parts_of(config), *combined]:
        row = {
            "run": config.run_name,
            "method": config.method.name,
            "epoch": epoch,
            "part": pid.name,
            "kind": pid.kind,
            "arch": pid.arch,
        }
        for stats in (train_stats, eval_stats, lrs):
            row.update(stats.get(pid.name, {}))
        rows.append({**row, "epoch_seconds": seconds, "elapsed_seconds": elapsed})
    return rows
