"""The ``okd-ray`` command."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from okd_ray.errors import OkdRayError


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]``: the first item without ``=`` is the config file."""
    config = None
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise OkdRayError(f"{item!r}: only one config file may be given (overrides are key=value)")
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from okd_ray.config import load_config
    from okd_ray.engines.run import resume, train

    path, overrides = split_config_and_overrides(args.items)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.resume:
        if path:
            raise OkdRayError("--resume takes the run folder's own config.yaml; give overrides only (key=value)")
        result = resume(args.resume, overrides, quiet=args.quiet)
    else:
        result = train(load_config(path, overrides), run_dir=args.run_dir, quiet=args.quiet)
    return 0 if result.rows else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="okd-ray", description="Online knowledge distillation on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a population",
        description="Train a population. With no CONFIG: the embedded default (digits, two members, AFD).",
    )
    train.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help="a YAML config and dotted overrides")
    train.add_argument("--run-dir", help="the run's output folder or URI (default: a new folder under output_dir)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--address", help="the Ray cluster to join (engine=ray); default: start a local one")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OkdRayError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
