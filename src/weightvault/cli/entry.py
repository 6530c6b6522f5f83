"""The console script and ``python -m weightvault``: import the CLI (which takes a moment: the
crypto, compression and numpy libraries) so that Ctrl-C during start-up exits 130 with one line,
like Ctrl-C later, never with a traceback."""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, a Ctrl-C (an interrupt inside a class body's
    ``__set_name__`` reaches us wrapped in a RuntimeError)."""
    seen: BaseException | None = exc
    chain: set[int] = set()
    while seen is not None and id(seen) not in chain:
        if isinstance(seen, KeyboardInterrupt):
            return True
        chain.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False


def main() -> None:
    try:
        from weightvault.cli.allocator import tune_allocator

        tune_allocator()  # before the libraries below allocate anything large
        from weightvault.cli.prewarm import start

        start(sys.argv[1:], os.environ)  # the password KDF runs beside the imports below
        from weightvault.cli.main import main as cli_main
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    cli_main()
