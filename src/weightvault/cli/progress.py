"""Progress bars for long operations: shown only on a terminal, never with --quiet or --json.

The API calls the callback (possibly from worker threads) with ``api.Progress`` counters; rich's
progress display is thread-safe and refreshes itself. The bar is transient: it disappears when the
operation ends, leaving only the command's summary.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from weightvault import api

__all__ = ["progress_bar", "progress_enabled"]


def progress_enabled(quiet: bool, as_json: bool) -> bool:
    return not quiet and not as_json and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(enabled: bool, label: str, unit: str = "files") -> Iterator[api.ProgressCallback | None]:
    """Yield a progress callback drawing a bar on stderr, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console  # imported here: most runs draw no bar, and rich is slow to import
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=None, count="")

        def update(p: api.Progress) -> None:
            count = f"{p.files_done}/{p.total_files} {unit}" if p.total_files else f"{p.files_done} {unit}"
            bar.update(task, completed=p.bytes_done, total=p.total_bytes or None, count=count)

        yield update
