"""The ``okd-ray`` command."""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys

from rich.text import Text

from okd_ray import __version__
from okd_ray.errors import Interrupted, NoResult, OkdRayError, Terminated, signal_of
from okd_ray.terminal import console

OVERRIDE = re.compile(r"[A-Za-z_][\w.-]*=")  # a dotted key, then =: a path may hold '=' too (Tune's trial folders)


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first item that is no ``key=value`` is the config file."""
    config = None
    overrides = []
    for item in items:
        if OVERRIDE.match(item):
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise OkdRayError(f"{item!r}: only one config file may be given (overrides are key=value)")
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from okd_ray.config import load_config
    from okd_ray.run import resume, train

    path, overrides = split_config_and_overrides(args.items)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.storage_path:
        overrides.append(f"output_dir={args.storage_path}")
    if args.resume:
        if path:
            raise OkdRayError("--resume takes the run folder's own config.yaml; give overrides only (key=value)")
        result = resume(args.resume, overrides, quiet=args.quiet)
    else:
        result = train(load_config(path, overrides), run_dir=args.run_dir, quiet=args.quiet)
    return 0 if result.rows else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from okd_ray.tune import SweepOptions, load_sweep_files, prepare, run_sweep

    path, overrides = split_config_and_overrides(args.items)
    raw_config, raw_space = load_sweep_files(path, overrides, args.space)
    options = SweepOptions(
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        metrics=args.metric.split(","),
        modes=args.mode.split(","),
        select_on_test=args.select_on_test,
        storage_path=args.storage_path,
        name=args.name,
        cpus_per_trial=args.cpus_per_trial,
        resume=args.resume,
        overwrite=args.overwrite,
        quiet=args.quiet,
        resume_command=resume_command(args.argv),
    )
    run_sweep(prepare(raw_config, raw_space, options), address=args.address)  # raises unless a trial finished
    return 0


def resume_command(argv: list[str]) -> str:
    """The exact command that continues the sweep ``argv`` started: the same arguments, with ``--resume``."""
    return shlex.join(["okd-ray", *(a for a in argv if a not in ("--resume", "--overwrite")), "--resume"])


def cmd_report(args: argparse.Namespace) -> int:
    from okd_ray.report import make_report

    make_report(args.folder)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from okd_ray.trained.evaluate import evaluate_run

    evaluate_run(args.run_dir, args.items, args.checkpoint, args.out, args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from okd_ray.trained.export import export_model

    meta = export_model(args.run_dir, args.part, args.format, args.out, args.checkpoint)
    if not args.quiet:
        console().print(
            f"{meta['part']} as {args.format}: {args.out}/{meta['file']} (largest difference to "
            f"okd_ray.load_model on a check batch: {meta['max_abs_difference']:.3g}), with MODEL_CARD.md"
        )
    return 0


def checkpoint_epoch(text: str) -> int | str:
    return text if text == "last" else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="okd-ray", description="Online knowledge distillation on Ray.")
    parser.add_argument("--version", action="version", version=f"okd-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a population",
        description="Train a population. With no CONFIG: the embedded default (digits, two members, AFD).",
    )
    train.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help="a YAML config and dotted overrides")
    train.add_argument("--run-dir", help="the run's output folder or URI (default: a new folder under output_dir)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--address", help="the Ray cluster to join (engine=ray); default: start a local one")
    train.add_argument("--storage-path", help="where run folders go (output_dir): a local folder or s3:// / gs:// URI")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser(
        "tune",
        help="search a population run's weights with Ray Tune and Optuna",
        description="Each trial is one population run. The config's top-level 'search:' mapping (or --space FILE) "
        "maps dotted keys to {uniform|loguniform|int: [low, high]} or {choice: [...]}.",
    )
    tune.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help="a YAML config and dotted overrides")
    tune.add_argument("--space", help="a YAML file with the search space (instead of the config's search:)")
    tune.add_argument("--num-samples", type=int, default=8, help="trials to run (default 8)")
    tune.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    tune.add_argument("--scheduler", default="asha", choices=["asha", "pbt", "none"])
    tune.add_argument(
        "--metric",
        default="mean_val_top1",
        help="mean_val_top1 (the default), m0_val_top1, best_val_top1, fused_val_top1, ...: accuracies "
        "on the validation split held out of the training images (data.validation, 10%% unless the "
        "config sets it); comma-separated for a multi-objective search (with --scheduler none)",
    )
    tune.add_argument(
        "--select-on-test",
        action="store_true",
        help="allow a test metric (m0_test_top1, ...) as --metric; the results are then optimistic, "
        "and the table, best_config.yaml and the report say so first",
    )
    tune.add_argument("--mode", default="max", help="max or min (comma-separated, one per metric)")
    tune.add_argument("--storage-path", default="runs/tune", help="local folder or s3:// / gs:// URI")
    tune.add_argument(
        "--name",
        default=None,
        help="the sweep's folder under --storage-path (default: the config's name, or DATA-METHOD)",
    )
    tune.add_argument("--address", help="the Ray cluster to join; default: start a local one")
    tune.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs of a trial with engine=local")
    tune.add_argument("--resume", action="store_true", help="continue the interrupted sweep --storage-path/--name")
    tune.add_argument("--overwrite", action="store_true", help="replace an earlier sweep --storage-path/--name")
    tune.add_argument("--quiet", action="store_true", help="print nothing but errors and the final table")
    tune.set_defaults(func=cmd_tune)

    report = sub.add_parser("report", help="a table, plots and report.md for a run's or a sweep's folder")
    report.add_argument("folder", help="the folder okd-ray train or okd-ray tune wrote (local or URI)")
    report.set_defaults(func=cmd_report)

    evaluate = sub.add_parser(
        "eval",
        help="every part of a run's checkpoint on its test split (or other data)",
        description="Print every part's accuracies and write eval.parquet; on the run's own "
        "data they equal its metrics.parquet row of that epoch.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (local or URI)")
    evaluate.add_argument(
        "items",
        nargs="*",
        metavar="[key=value]",
        help="other data (data.name=..., data.root=..., data.test_limit=...), threads, device",
    )
    export = sub.add_parser("export", help="a run's member, ensemble or fused classifier as a file, with a model card")
    export.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (local or URI)")
    export.add_argument("--part", default="m0", help="m0 (or m0:ARCH), m1, ..., ensemble, fused, teacher (default m0)")
    export.add_argument("--format", default="safetensors", help="safetensors (default), pt2, onnx, torchscript")
    export.add_argument("--out", required=True, help="the folder to write (local or URI)")
    for command in (evaluate, export):
        command.add_argument(
            "--checkpoint",
            type=checkpoint_epoch,
            default="last",
            metavar="EPOCH",
            help="the checkpoint of this epoch (default: the last)",
        )
        command.add_argument("--quiet", action="store_true", help="print nothing but errors")
    evaluate.add_argument("--out", help="where to write the table (default: RUN_DIR/eval.parquet)")
    evaluate.set_defaults(func=cmd_eval)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 nothing usable came out (no trial finished), 2 a user error, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # key=value items may come after options too
    if extra and (not hasattr(args, "items") or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.items = args.items + extra
    args.argv = argv
    Terminated.received = False  # this command's own signals (an earlier one of this process may have had one)
    on_sigterm = signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    try:
        return args.func(args)
    except OkdRayError as e:
        prefix = "" if isinstance(e, Interrupted) else "error: "  # an interruption is no error: it says how to go on
        console(stderr=True, soft_wrap=True).print(Text.assemble((prefix, "bold red"), str(e)))
        return e.exit_code if isinstance(e, Interrupted) else 1 if isinstance(e, NoResult) else 2
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM before a run or a sweep began: nothing of it was written
        console(stderr=True).print("interrupted")
        return 128 + signal_of(e)
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)


def stop_like_ctrl_c(signum: int, frame) -> None:
    """SIGTERM stops okd-ray as Ctrl-C does: the run keeps its last checkpoint and prints how to continue."""
    raise Terminated.raised()


if __name__ == "__main__":
    sys.exit(main())
