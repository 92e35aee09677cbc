"""``logging: [mlflow]``: one MLflow run per okd-ray run, its resolved config as params, its metrics by tag.

The tracking store is ``MLFLOW_TRACKING_URI`` where it is set (a server, a database), else a SQLite database in
the run folder, ``mlflow.db`` (MLflow 3 keeps its file store for old data only; SQLite is what it recommends
locally). Epoch values go under their tags (``m0/test_top1``), step values under ``steps/`` (``steps/m0/ce``), so
the two never share a metric's history. The experiment is ``MLFLOW_EXPERIMENT_NAME``, else ``okd-ray``. A resumed
run logs on into the same MLflow run (found by its folder's tag); MLflow keeps every value it was sent, so an epoch
trained again after a damaged checkpoint appears twice at its step, the later value being the run's.
"""

from __future__ import annotations

import logging
import os
import time

from okd_ray.config import TrainConfig
from okd_ray.errors import ConfigError
from okd_ray.runfolder import dotted
from okd_ray.storage import RunStore

DATABASE = "mlflow.db"
EXPERIMENT = "okd-ray"
FOLDER_TAG = "okd_ray.run_folder"
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}  # okd-ray's end, MLflow's word
BATCH = 1000  # MLflow's limit of metrics in one log_batch call


def tracking_uri(folder: RunStore) -> str:
    """Where a run (or a sweep) in ``folder`` logs: the user's MLFLOW_TRACKING_URI, or SQLite in the folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if "://" in folder.uri:
        raise ConfigError(
            f"logging: mlflow: {folder.uri} is no local folder to keep an MLflow database in; set "
            "MLFLOW_TRACKING_URI to your tracking server (or a sqlite:/// path), or drop mlflow"
        )
    return f"sqlite:///{folder.path(DATABASE)}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def sweep_callback(folder: RunStore, name: str):
    """For ``okd-ray tune`` with ``logging: [mlflow]``: Tune's own MLflow callback, one MLflow run per trial (its
    sampled values as params, every reported metric at every epoch), in the sweep's store and an experiment
    named after the sweep (or MLFLOW_EXPERIMENT_NAME). The trials' runs then log no MLflow run of their own."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(
        tracking_uri(folder),
        experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or name,
        tags={"okd_ray.sweep_folder": folder.address},
    )


def check_installed() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "logging: mlflow needs the mlflow package: pip install 'okd-ray[mlflow]' "
            "(or mlflow-skinny), or drop mlflow from logging"
        ) from None


class MLflowTracker:
    @staticmethod
    def check(store: RunStore) -> None:
        check_installed()
        tracking_uri(store)

    def __init__(self, config: TrainConfig, store: RunStore, first_step: int, first_epoch: int):
        self.config, self.store = config, store
        self.client = self.run_id = None

    def open(self) -> None:
        """The client, and this folder's MLflow run: the one a first attempt made, or a new one."""
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # a new database's set-up lines: not for the run's terminal
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri(self.store))
        experiment = self.client.get_experiment_by_name(experiment_name())
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name())
        found = self.client.search_runs([experiment_id], f"tags.`{FOLDER_TAG}` = '{self.store.address}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(
            experiment_id, run_name=self.config.run_name, tags={FOLDER_TAG: self.store.address}
        )
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in dotted(self.config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow's limit of params in one call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, kind: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.client is None:
            self.open()
        now = int(time.time() * 1000)
        prefix = "steps/" if kind == "steps" else ""
        metrics = [Metric(prefix + tag, value, now, step) for tag, value in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def flush(self) -> None:
        pass  # every log_batch is written when it returns

    def close(self, status: str) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, STATUS[status])

    def discard(self) -> None:
        if self.client is not None:
            self.client.delete_run(self.run_id)
        if "MLFLOW_TRACKING_URI" not in os.environ:
            self.store.delete(DATABASE)
