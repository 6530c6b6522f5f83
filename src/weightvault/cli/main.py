"""The ``weightvault`` command: the click group, global options and error reporting.

Errors print ``error: <message>`` (and ``hint: <hint>``) on stderr and exit with the error's
``exit_code`` (see weightvault.errors); click usage errors exit 2; Ctrl-C exits 130; any other
exception exits 1 with a one-line message (the traceback only with ``WEIGHTVAULT_DEBUG=1``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import sys
import traceback
from collections.abc import Sequence

import click

from weightvault import __version__, api
from weightvault.cli import (
    cmd_agent,
    cmd_backup,
    cmd_check,
    cmd_copy,
    cmd_diff,
    cmd_drill,
    cmd_failover,
    cmd_forget,
    cmd_init,
    cmd_key,
    cmd_ledger,
    cmd_ls,
    cmd_policy,
    cmd_prune,
    cmd_queue,
    cmd_repair,
    cmd_restore,
    cmd_serve,
    cmd_snapshots,
    cmd_stats,
    cmd_status,
    cmd_tier,
    cmd_ui,
    cmd_unlock,
    cmd_validate,
    cmd_verify,
)
from weightvault.cli.common import Globals, storage_options
from weightvault.cli.entry import _interrupted
from weightvault.cli.output import display_lines
from weightvault.errors import WeightvaultError

EXIT_OUT_OF_MEMORY = 26

__all__ = ["cli", "main", "run"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-r", "--repo", envvar="WEIGHTVAULT_REPO", metavar="PATH|s3://BUCKET/PREFIX|https://HOST:PORT/NAME",
    help="Repository: a directory, an S3 URL or a repository server's URL (default: $WEIGHTVAULT_REPO, else the"
    " embedded default repository).",
)
@click.option(
    "--s3-endpoint", envvar="WEIGHTVAULT_S3_ENDPOINT", metavar="URL",
    help="S3-compatible endpoint for s3:// repositories, e.g. http://minio:9000 (default: AWS, or $AWS_ENDPOINT_URL).",
)
@click.option(
    "--connections", type=click.IntRange(1, 256), default=8, show_default=True, envvar="WEIGHTVAULT_CONNECTIONS",
    help="Concurrent requests to object storage (also parts per multipart upload and restore reader threads).",
)
@click.option("--s3-object-lock", type=click.Choice(["GOVERNANCE", "COMPLIANCE"]), envvar="WEIGHTVAULT_S3_OBJECT_LOCK",
              help="The bucket has S3 Object Lock: give the objects of retention-locked snapshots (backup --lock-for)"
              " an Object Lock retention in this mode until the same date.")
@click.option("--s3-storage-class", type=click.Choice(api.S3_STORAGE_CLASSES), envvar="WEIGHTVAULT_S3_STORAGE_CLASS",
              help="Write the data packs of s3:// repositories in this storage class (trees, index, snapshots, keys"
              " and locks stay STANDARD). GLACIER and DEEP_ARCHIVE are offline: `restore --thaw` (docs/CLOUD.md).")
@click.option("--azure-access-tier", type=click.Choice(api.AZURE_TIERS), envvar="WEIGHTVAULT_AZURE_ACCESS_TIER",
              help="Write the data packs of az:// repositories in this access tier (Cool, Cold: cheaper, online;"
              " Archive: offline, `restore --thaw` rehydrates).")
@click.option("--limit-upload", metavar="RATE", help="Upload at most RATE bytes/s, e.g. 50M, 10MiB, 800k.")
@click.option("--limit-download", metavar="RATE", help="Download at most RATE bytes/s, e.g. 50M, 10MiB, 800k.")
@click.option(
    "--password-file", metavar="FILE",
    help="Read the password from the first line of FILE (default: $WEIGHTVAULT_PASSWORD, "
    "$WEIGHTVAULT_PASSWORD_FILE, the default repository's key file, or a prompt).",
)
@click.option("--retry-lock", metavar="DURATION", envvar="WEIGHTVAULT_RETRY_LOCK",
              help="If the repository is locked, wait up to DURATION (30s, 15min, 2h) for the lock; maintenance"
              " operations queue and are served in order (default: exit 12 at once).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars and no summaries; errors and warnings still show.")
@click.option("--skip-unreadable", is_flag=True, envvar="WEIGHTVAULT_SKIP_UNREADABLE",
              help="Let 'latest' and '@TIME' resolve past snapshot files that cannot be read (default: exit 4).")
@click.version_option(__version__, prog_name="weightvault")
@click.pass_context
def cli(
    ctx: click.Context,
    repo: str | None,
    s3_endpoint: str | None,
    connections: int,
    s3_object_lock: str | None,
    s3_storage_class: str | None,
    azure_access_tier: str | None,
    limit_upload: str | None,
    limit_download: str | None,
    password_file: str | None,
    retry_lock: str | None,
    quiet: bool,
    skip_unreadable: bool,
) -> None:
    """Deduplicated, compressed, encrypted backups of model checkpoints and training runs."""
    storage = storage_options(s3_endpoint, connections, limit_upload, limit_download, s3_object_lock,
                              s3_storage_class)
    storage = dataclasses.replace(storage, azure_access_tier=azure_access_tier)
    if retry_lock:
        api.set_lock_wait(api.parse_interval(retry_lock).total_seconds())
    ctx.obj = Globals(repo=repo, password_file=password_file, quiet=quiet, storage=storage,
                      skip_unreadable=skip_unreadable)


for _cmd in (
    cmd_init.init, cmd_backup.backup, cmd_snapshots.snapshots, cmd_ls.ls, cmd_diff.diff, cmd_restore.restore,
    cmd_check.check, cmd_stats.stats, cmd_key.key, cmd_unlock.unlock, cmd_repair.repair, cmd_forget.forget,
    cmd_prune.prune, cmd_copy.copy, cmd_policy.policy, cmd_tier.tier, cmd_status.status, cmd_verify.verify,
    cmd_validate.validate, cmd_drill.drill, cmd_ledger.ledger, cmd_queue.queue, cmd_agent.agent, cmd_agent.watch,
    cmd_serve.serve, cmd_ui.ui, cmd_failover.failover,
):
    cli.add_command(_cmd)


def _report(message: str, hint: str | None = None) -> None:
    click.echo(f"error: {display_lines(message)}", err=True)
    if hint:
        click.echo(f"hint: {display_lines(hint)}", err=True)


def _out_of_memory() -> int:
    """A MemoryError: the address-space limit (``ulimit -v``) or the machine's memory ran out."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit = "no address-space limit" if soft == resource.RLIM_INFINITY else f"`ulimit -v` is {soft >> 20} MiB"
    _report(f"out of memory ({limit}): the operation stopped; nothing it had not finished is listed as done",
            "a backup or restore needs about 1 GiB of address space (RSS stays near 250 MiB): raise `ulimit -v`"
            " or free memory, then run it again (a backup reuses what it had uploaded)")
    return EXIT_OUT_OF_MEMORY


def _say_interrupted() -> int:
    """Ctrl-C: one line, written without click (a Ctrl-C during one of click's lazy imports
    leaves that module half made, and ``click.echo`` would fail on it with a traceback)."""
    sys.stderr.write("error: interrupted\n")
    return 130


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (no sys.exit), reporting errors on stderr."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="weightvault", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except WeightvaultError as exc:
        _report(exc.message, exc.hint)
        return exc.exit_code
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            return _say_interrupted()
        _report("aborted")
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        return _say_interrupted()
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:  # a local file the library does not own (restore target, source path)
        where = f"{exc.filename}: " if exc.filename else ""
        _report(f"{where}{exc.strerror or exc}")
        return 1
    except MemoryError:
        return _out_of_memory()
    except Exception as exc:
        if os.environ.get("WEIGHTVAULT_DEBUG") == "1":
            traceback.print_exc()
        detail = f"{type(exc).__name__}: {exc}"
        _report(f"unexpected {detail}", "run again with WEIGHTVAULT_DEBUG=1 for a traceback, and report it")
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point. Library warnings (e.g. a skipped damaged snapshot file) go to
    stderr as ``warning: ...``; ``WEIGHTVAULT_DEBUG=1`` shows debug logging too."""
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("WEIGHTVAULT_DEBUG") == "1" else logging.WARNING,
        format="%(levelname)s: %(message)s" if os.environ.get("WEIGHTVAULT_DEBUG") == "1" else "warning: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = run(argv)
    except BaseException as exc:  # a Ctrl-C that struck inside an error handler of ``run``
        if not _interrupted(exc):
            raise
        code = _say_interrupted()
    sys.exit(code)
