"""``weightvault stats``: sizes before and after deduplication and compression."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import echo_json, human_size, print_table

__all__ = ["stats"]


def _size(n: int) -> str:
    return f"{human_size(n)} ({n} bytes)"


@click.command()
@click.argument("snapshot", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@pass_globals
def stats(g: Globals, snapshot: str | None, as_json: bool) -> None:
    """Statistics of SNAPSHOT, or of all snapshots together."""
    s = open_repository(g).stats(snapshot)
    if as_json:
        echo_json(s.to_json())
        return
    rows = [
        ["snapshots", str(s.snapshots)],
        ["files", str(s.files)],
        ["raw size", _size(s.raw_bytes)],
        ["unique size (deduplicated)", _size(s.unique_bytes)],
        ["stored size (compressed, encrypted)", _size(s.stored_bytes)],
        ["  of which delta bases only", _size(s.base_bytes)],
        ["deduplication ratio", f"{s.dedup_ratio:.2f}x"],
        ["compression ratio", f"{s.compression_ratio:.2f}x"],
        ["stored / raw", f"{100 * s.stored_fraction:.1f}%"],
        ["distinct blobs", f"{s.blobs} ({s.delta_blobs} stored as checkpoint deltas)"],
        ["repository size (all packs)", f"{_size(s.repository_bytes)} in {s.packs} pack(s)"],
        *[[f"  stored as {codec}", _size(n)] for codec, n in sorted(s.stored_by_codec.items())],
        *[[f"raw size, {kind} chunking", _size(n)] for kind, n in sorted(s.raw_by_chunking.items())],
    ]
    print_table(["Statistic", "Value"], rows)
