"""What ``okd-ray tune`` prints while it runs (without ``--quiet``): a line per trial event, not Tune's own tables
(a box of every trial every 30 s, and a TensorBoard pointer into a folder of Ray's session)."""

from __future__ import annotations

from ray import tune

from okd_ray.terminal import console, short_names


class SweepProgress(tune.Callback):
    """One line when a trial starts (its sampled values), after each of its epochs (the selection metric) and when
    it ends; a diverged trial says what diverged."""

    def __init__(self, metric: str, epochs: int):
        self.metric, self.epochs = metric, epochs  # no console kept: Tune pickles its callbacks with the sweep

    @staticmethod
    def say(line: str) -> None:
        console(soft_wrap=True).print(line)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        keys = list(trial.config)
        values = ", ".join(
            f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in zip(short_names(keys), (trial.config[k] for k in keys))
        )
        self.say(f"trial {trial.trial_id} started: {values}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "diverged" in result:
            self.say(f"trial {trial.trial_id} diverged: {result['diverged']}")
        elif self.metric in result:
            self.say(
                f"trial {trial.trial_id} epoch {result['epoch']}/{self.epochs}: {self.metric} {result[self.metric]:.4g}"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if "diverged" not in result:  # said already
            epochs = result.get("epoch", 0)
            ended = "finished" if epochs >= self.epochs else f"was stopped early after epoch {epochs}"
            self.say(f"trial {trial.trial_id} {ended}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.say(f"trial {trial.trial_id} failed (its error is in trials.parquet at the end)")
