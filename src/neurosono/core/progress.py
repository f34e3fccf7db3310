"""Progress bars for long work: rich on a terminal, silent when asked or when not interactive."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
# One stderr console for every bar: bars and log lines never interleave on screen.
console = Console(stderr=True)


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Yield from ``items`` with a progress bar (elapsed and remaining time) on stderr."""
    if not enabled:
        yield from items
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as progress:
        task = progress.add_task(description, total=total if total is not None else _len(items))
        for item in items:
            yield item
            progress.advance(task)


def _len(items: Iterable[object]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def note(message: str, enabled: bool = True) -> None:
    """A plain progress line for logs: shown only when stderr is not a terminal (no live bar there)."""
    if enabled and not sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)
