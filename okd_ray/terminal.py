"""How okd-ray prints: consoles that show every name as it is, and table headers short enough for 80 columns.

rich would turn ``tv:resnet18`` into an emoji and ``[...]`` into markup, so both are off (and so is
highlighting); every console okd-ray prints with comes from here."""

import re

from rich import box
from rich.console import Console
from rich.table import Table


def console(stderr: bool = False, **options) -> Console:
    return Console(stderr=stderr, emoji=False, markup=False, highlight=False, **options)


def warn(text: str) -> None:
    """On stderr, even when quiet: what went wrong and what okd-ray did instead, which the user must know."""
    console(stderr=True, soft_wrap=True).print(f"warning: {text}")


def short_names(keys: list[str]) -> list[str]:
    """Table headers for dotted keys: each key's shortest dotted suffix that no other key ends with
    (``method.terms.adversarial.weight`` -> ``adversarial.weight`` beside ``ring_kl.weight``;
    ``members.0.optimizer.lr`` keeps ``0.optimizer.lr``)."""
    names = []
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts) - 1, -1, -1):
            name = ".".join(parts[i:])
            if not any(other != key and (other == name or other.endswith("." + name)) for other in keys):
                break
        names.append(name)
    return names


def fitted_table(
    title: str, headers: list[str], rows: list[list[str]], left: tuple[str, ...] = (), width: int = 80
) -> Table:
    """A table of ``rows`` (strings) no wider than ``width``, without vertical borders: long headers wrap (the one
    with the most room over its values first) so that values need not, and nothing is cut. A header wraps at a
    ``.`` or ``_``, never inside a word: the columns are at least as wide as a header's longest word with its
    ``.`` (else its longest word), two spaces apart (else one); only where even that is too wide may a word wrap
    (down to 6 characters)."""
    need = [max([len(row[i]) for row in rows], default=1) for i in range(len(headers))]
    widths = [max(n, len(h)) for n, h in zip(need, headers)]
    floors = [[max(n, *map(len, re.findall(words, h))) for n, h in zip(need, headers)] for words in (UNITS, WORDS)]
    fallback = [max(n, min(len(h), 6)) for n, h in zip(need, headers)]
    floor, gap = next(
        ((f, gap) for f in floors for gap in (2, 1) if sum(f) + gap * (len(headers) - 1) <= width), (fallback, 1)
    )
    room = width - gap * (len(headers) - 1)  # spaces between columns, no borders
    while sum(widths) > room and any(w > f for w, f in zip(widths, floor)):
        i = max(range(len(widths)), key=lambda i: widths[i] - floor[i])
        widths[i] -= 1
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        padding=(0, gap - 1),
    )
    for header, w in zip(headers, widths):
        table.add_column(wrapped(header, w), width=w, overflow="fold", justify="left" if header in left else "right")
    for row in rows:
        table.add_row(*row)
    return table


UNITS = r"[^._]+[._]*|[._]+"  # a header's words with the separators after them: members. 0. optimizer. lr
WORDS = r"[^._]+|[._]"  # and apart: members . 0 . optimizer . lr


def wrapped(header: str, width: int) -> str:
    """``header`` in lines of at most ``width`` characters, broken only at a ``.`` or ``_`` (after it if it fits)."""
    lines = [""]
    for word in re.findall(WORDS, header):
        if lines[-1] and len(lines[-1]) + len(word) > width:
            lines.append("")
        lines[-1] += word
    return "\n".join(lines)
