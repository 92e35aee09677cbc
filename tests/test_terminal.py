"""What okd-ray prints: names as they are, and tables no wider than 80 columns with nothing cut."""

import re

import pytest

from okd_ray.progress import epoch_table
from okd_ray.terminal import console, fitted_table, short_names


def render(table) -> list[str]:
    out = console(width=80, record=True, file=open("/dev/null", "w"))
    out.print(table)
    return out.export_text().splitlines()


def test_no_emoji_and_no_markup_in_names():
    out = console(width=80, record=True, file=open("/dev/null", "w"))
    out.print("m1:tv:resnet18 [bold]x[/bold] :smile:")
    assert out.export_text().strip() == "m1:tv:resnet18 [bold]x[/bold] :smile:"


@pytest.mark.parametrize(
    "keys, names",
    [
        (
            ["method.kl_weight", "method.afd.adv_weight", "method.afd.disc_optimizer.lr", "method.temperature"],
            ["kl_weight", "adv_weight", "lr", "temperature"],
        ),
        (
            ["members.0.optimizer.lr", "members.1.optimizer.lr", "method.kl_weight"],
            ["0.optimizer.lr", "1.optimizer.lr", "kl_weight"],
        ),
        (["lr", "optimizer.lr"], ["lr", "optimizer.lr"]),
    ],
)
def test_short_names_are_the_shortest_unique_suffixes(keys, names):
    assert short_names(keys) == names


@pytest.mark.parametrize("keys", [1, 5, 6], ids=lambda n: f"{n} keys")
def test_sweep_tables_fit_80_columns_and_cut_nothing(keys):
    names = short_names(
        [
            "members.0.optimizer.lr",
            "members.1.optimizer.lr",
            "method.afd.adv_weight",
            "method.kl_weight",
            "method.temperature",
            "method.afd.disc_optimizer.lr",
        ][:keys]
    )
    metrics = ["mean_test_top1"] + (["fused_test_top1"] if keys > 5 else [])
    headers = ["trial", *names, "epochs", "status", *metrics]
    row = [
        "7a64db99 *",
        *["0.000196", "0.0295", "1.58", "7.5", "3", "1.12e-05"][:keys],
        "4",
        "unfinished",
        "97.5",
        "98.1",
    ][: len(headers)]
    table = fitted_table("sweep s: 3 trials (* best)", headers, [row] * 3, left=("trial", "status"))
    lines = render(table)
    assert max(len(line) for line in lines) <= 80 and "…" not in "".join(lines)
    if keys == 6:  # the values alone are wider than 80 columns: they wrap too, but nothing is cut
        return
    assert_headers_wrap_between_words(lines, headers)
    assert all(any(f" {value} " in f" {line} " for line in lines) for value in row), lines  # each value whole


def assert_headers_wrap_between_words(lines: list[str], headers: list[str]) -> None:
    """Every piece of a header on screen is whole words of it (split at a ``.`` or ``_``), never a word's part."""
    words = {h: re.findall(r"[^._]+|[._]", h) for h in headers}
    whole = {"".join(w[i:j]) for w in words.values() for i in range(len(w)) for j in range(i + 1, len(w) + 1)}
    header_lines = lines[1 : next(i for i, line in enumerate(lines) if "─" in line)]  # under the title
    pieces = [piece for line in header_lines for piece in line.split()]
    assert pieces and all(piece in whole for piece in pieces), (pieces, headers)


def test_sweep_table_headers_wrap_between_words():
    """The sweep's own headers, which used to split mid-word (``optimizer.l`` over ``r``, ``discriminat``)."""
    headers = [
        "trial",
        "optimizer.lr",
        "discriminator_optimizer.lr",
        "temperature",
        "weight",
        "epochs",
        "status",
        "mean_val_top1",
    ]
    row = ["cafca7e5 *", "0.000141", "0.000196", "1", "1.25", "1", "done", "26.9"]
    assert_headers_wrap_between_words(
        render(fitted_table("sweep k: 2 trials", headers, [row] * 2, left=("trial", "status"))), headers
    )


def test_the_run_table_fits_80_columns_with_every_term_and_part():
    terms = {
        "ce": 1.2345,
        "kl_peer": 0.1234,
        "kl_fused": 0.5,
        "adv_g": 0.9,
        "disc": 0.5,
        "train_top1": 99.12,
        "test_top1": 98.12,
        "test_top5": 100.0,
    }
    rows = [{"part": p, **terms} for p in ("m0:cnn16", "m1:tv:resnet18", "m2:wrn-16-2")]
    rows += [
        {"part": "ensemble", "test_top1": 99.0, "test_top5": 100.0},
        {"part": "fused", "fused_ce": 0.3, "fused_kl": 0.2, "train_top1": 99.5, "test_top1": 99.0, "test_top5": 100.0},
    ]
    lines = render(epoch_table(rows, "after epoch 3"))
    assert max(len(line) for line in lines) <= 80 and "…" not in "".join(lines)
    assert all(any(r["part"] in line for line in lines) for r in rows)
