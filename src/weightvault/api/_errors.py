"""How an OSError on this machine's own files (not the repository's storage) is reported."""

from __future__ import annotations

import errno
import os

from weightvault.backends.local import FD_LIMIT_HINT, convert_os_error
from weightvault.errors import LocalPathError, WeightvaultError

__all__ = ["local_error"]

_HINTS = {
    errno.EMFILE: FD_LIMIT_HINT,
    errno.EIO: "the disk reported an I/O error (see `dmesg`); files a restore already gave their own names"
               " are complete, the rest are `.wvtmp-*` temporary files: fix or replace the disk, then run it"
               " again (a restore with `--overwrite if-changed` keeps what is already whole)",
}
_HINTS[errno.ENFILE] = _HINTS[errno.EMFILE]


def local_error(exc: OSError) -> WeightvaultError:
    """An OSError from a local path an operation was given (restore target, directory to compare):
    NoSpaceError for ENOSPC/EDQUOT, else LocalPathError (exit 1, as the CLI always reported it)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return convert_os_error(exc, exc.filename or "a local file")
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
    hint = _HINTS.get(exc.errno or 0, "check that the path exists, is a directory where one is needed, and that"
                                      " this user may write there")
    return LocalPathError(f"{where}{exc.strerror or exc}", errno=exc.errno,
                          filename=None if exc.filename is None else str(exc.filename), hint=hint)
