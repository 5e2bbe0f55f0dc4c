"""Rich progress bars and result tables shared by the commands."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def training_progress(console: Console, disable: bool = False) -> Progress:
    """A progress bar with loss, accuracy, img/s and robust (the last epoch's PGD accuracy, a text)
    fields (set through ``update(**fields)``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1%}  robust {task.fields[robust]}  "
            "{task.fields[ips]:,.0f} img/s"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def task_progress(console: Console, disable: bool = False) -> Progress:
    """A plain progress bar with elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[object]]) -> Table:
    """A titled table of ``rows`` under ``columns`` (cells shown with ``str``)."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    return t
