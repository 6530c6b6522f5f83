"""The console script and ``python -m weightvault``: import the CLI (which takes a moment: the
crypto, compression and numpy libraries) so that Ctrl-C during start-up exits 130 with one line,
like Ctrl-C later, never with a traceback."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    try:
        from weightvault.cli.main import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    cli_main()
