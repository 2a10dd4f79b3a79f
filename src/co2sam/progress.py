"""The one progress bar style of every long command: description, bar, count,
elapsed time and ETA, on stderr (so piped stdout stays clean)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(
    *extra_columns: ProgressColumn,
    enabled: bool = True,
    transient: bool = False,
    console: Console | None = None,
) -> Progress:
    """A rich ``Progress`` (use as a context manager); silent when not ``enabled``.

    ``extra_columns`` follow the ETA (e.g. images/s and running losses in training).
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *extra_columns,
        console=console or Console(stderr=True),
        disable=not enabled,
        transient=transient,
    )
