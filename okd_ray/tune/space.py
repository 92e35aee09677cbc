"""Search spaces: dotted config keys mapped to distributions, checked against the config before any trial.

search:
  method.terms.ring_kl.weight: {loguniform: [0.1, 10]}
  method.terms.adversarial.weight: {uniform: [0.0, 2.0]}
  method.terms.ring_kl.temperature: {choice: [1, 3, 4]}
  method.terms.fused_kl.rampup_epochs: {int: [0, 5]}       # inclusive bounds
"""

from __future__ import annotations

from typing import Any

from ray import tune

from okd_ray.config import TrainConfig, apply_overrides, override, validate
from okd_ray.errors import ConfigError

KINDS = ("uniform", "loguniform", "choice", "int")


def parse_space(raw_space: Any, raw_config: dict[str, Any]) -> dict[str, Any]:
    """Turn ``{key: {kind: args}}`` into Tune distributions; every key and bound is checked first."""
    if not isinstance(raw_space, dict) or not raw_space:
        raise ConfigError(
            "search: give a mapping of dotted config keys to distributions, e.g. "
            "method.terms.ring_kl.weight: {loguniform: [0.1, 10]}"
        )
    config = validate(raw_config)
    space = {}
    for key, spec in raw_space.items():
        check_acts(key, config)
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"search.{key}: give one of {', '.join(KINDS)}, e.g. {{uniform: [0, 1]}}; got {spec!r}")
        kind, args = next(iter(spec.items()))
        values = _bounds(key, kind, args)
        for value in values:  # each extreme must be a valid config value for that key
            try:
                validate(apply_overrides(raw_config, params_to_overrides({key: value})))
            except ConfigError as e:
                raise ConfigError(f"search.{key}: the value {value!r} is not valid here:\n{e}") from None
        space[key] = _domain(kind, args)
    return space


# optimizers whose step ignores a constant factor on the loss (but for their epsilon): they divide by a running scale
SCALE_FREE = ("adam", "adamw", "adamax", "nadam", "radam", "adagrad", "rmsprop", "adadelta", "adafactor")


def check_acts(key: str, config: TrainConfig) -> None:
    """Refuse to search a weight that barely changes training: the weight of a method's only feature-map term,
    when a separate scale-free optimizer (Adam) steps on that term alone. Adam divides the gradient by its own
    running scale, so w·loss trains like loss: w = 0.1 moved the parameters by 1.2 % of the way from w = 1 to
    w = 0 after one step, 16 % after 20 (measured, alternating AFD)."""
    parts = key.split(".")
    if parts[:2] != ["method", "terms"] or parts[-1] != "weight" or len(parts) != 4:
        return
    feature_terms = [s.name for s in config.method.method.terms if s.term.update == "feature"]
    update = config.method.feature_update
    if feature_terms != [parts[2]] or update.mode == "joint" or update.optimizer.name not in SCALE_FREE:
        return
    raise ConfigError(
        f"search.{key}: in the {update.mode!r} feature update, {parts[2]} is the only loss that "
        f"method.feature_update.optimizer ({update.optimizer.name}) steps on, and {update.optimizer.name} "
        "ignores a constant scale on its loss, so this weight barely changes training. Search "
        "method.feature_update.optimizer.lr instead (it sets how far the feature term moves the network), or set "
        "method.feature_update.mode=joint, where the weight sets the term's share of one loss"
    )


def _bounds(key: str, kind: str, args: Any) -> list[Any]:
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"search.{key}: choice needs a non-empty list of values")
        return args
    if not isinstance(args, list) or len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
        raise ConfigError(f"search.{key}: {kind} needs [low, high]; got {args!r}")
    low, high = args
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int) and low <= high):
        raise ConfigError(f"search.{key}: int needs integer bounds with low <= high; got {args!r}")
    if kind in ("uniform", "loguniform") and not low < high:
        raise ConfigError(f"search.{key}: {kind} needs low < high; got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search.{key}: loguniform needs low > 0; got {args!r}")
    return [low, high]


def _domain(kind: str, args: Any):
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "int":
        return tune.randint(args[0], args[1] + 1)  # Tune's upper bound is exclusive
    return tune.choice(args)


def params_to_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's sampled values as ``key=value`` overrides (values in YAML syntax)."""
    return [override(key, value) for key, value in params.items()]
