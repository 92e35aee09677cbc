"""How okd-ray prints: consoles that show every name as it is, and table headers short enough for 80 columns.

rich would turn ``tv:resnet18`` into an emoji and ``[...]`` into markup, so both are off (and so is
highlighting); every console okd-ray prints with comes from here."""

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
    (``method.terms.adversarial.weight`` -> ``adversarial.weight`` beside ``ring_kl.weight``; ``members.0.optimizer.lr`` keeps ``0.optimizer.lr``)."""
    names = []
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts) - 1, -1, -1):
            name = ".".join(parts[i:])
            if not any(other != key and (other == name or other.endswith("." + name)) for other in keys):
                break
        names.append(name)
    return names


def fitted_table(title: str, headers: list[str], rows: list[list[str]], left: tuple[str, ...] = (),
                 width: int = 80) -> Table:
    """A table of ``rows`` (strings) no wider than ``width``, without vertical borders: long headers wrap (the one
    with the most room over its values first, down to 6 characters) so that values need not; nothing is cut."""
    need = [max([len(row[i]) for row in rows], default=1) for i in range(len(headers))]
    widths = [max(n, len(h)) for n, h in zip(need, headers)]
    floor = [max(n, min(len(h), 6)) for n, h in zip(need, headers)]
    room = width - 2 * (len(headers) - 1)  # two spaces between columns, no borders
    while sum(widths) > room and any(w > f for w, f in zip(widths, floor)):
        i = max(range(len(widths)), key=lambda i: widths[i] - floor[i])
        widths[i] -= 1
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for header, w in zip(headers, widths):
        table.add_column(header, width=w, overflow="fold", justify="left" if header in left else "right")
    for row in rows:
        table.add_row(*row)
    return table
