"""The crash-point campaign's quick mode (``bench/torture.py --quick`` runs the same): every
mutating operation crashed at an even sample of its durable writes, by SIGKILL before and after
the write and by EIO and ENOSPC instead of it, on real child processes; nothing may be lost."""

from __future__ import annotations

from pathlib import Path

from weightvault.testing.torture import OPS, CrashPoints, run_campaign


def test_every_operation_survives_a_crash_or_an_io_error_at_sampled_durable_writes(tmp_path: Path) -> None:
    report = run_campaign(tmp_path, sample=2)
    assert set(report.points) == set(OPS) and all(n >= 1 for n in report.points.values()), report.points
    outcomes = {r.outcome.split(" ")[0] for r in report.results}
    assert {"killed", "failed"} <= outcomes  # the faults really fired
    assert not report.lost, "\n".join(f"{r.op} {r.point} {r.mode}: {r.problems}" for r in report.lost)


def test_the_crash_point_wrapper_fires_exactly_at_its_call(tmp_path: Path) -> None:
    from weightvault.backends.base import FileType
    from weightvault.backends.local import LocalBackend
    from weightvault.errors import BackendError, NoSpaceError

    for mode, error in (("eio", BackendError), ("enospc", NoSpaceError)):
        root = tmp_path / mode
        b = CrashPoints(LocalBackend(str(root)), at=2, mode=mode)
        b.create()
        b.save(FileType.LOCK, "a", b"1")
        try:
            b.save(FileType.LOCK, "b", b"2")
        except error:
            pass
        else:
            raise AssertionError(f"{mode} did not fire at call 2")
        b.remove(FileType.LOCK, "a")  # call 3: past the point, delegated
        assert b.count == 3 and [n for n, _ in b.list(FileType.LOCK)] == []


def test_every_kind_of_stored_object_damaged_is_detected_named_and_never_restored_wrong(tmp_path: Path) -> None:
    from weightvault.testing.corruption import KINDS, run_corruption

    report = run_corruption(tmp_path, objects=1, flips=1)
    assert {d.kind for d in report.damages} == set(KINDS)
    assert len(report.damages) == 3 * len(KINDS)  # a flip, a truncation and a deletion of one object each
    assert sum(d.wrong_bytes for d in report.damages) == 0
    assert not report.failures, "\n".join(f"{d.kind} {d.name} {d.change}: {d.how} {d.problems}"
                                           for d in report.failures)
    index = [d for d in report.damages if d.kind == "index"]  # following the hints heals every one of them
    assert index and all(d.healed for d in index), [(d.change, d.how_healed) for d in index]


def test_eight_writers_forget_prune_and_check_together_on_s3_with_faults_lose_nothing(tmp_path: Path) -> None:
    """bench/torture.py --campaign load runs the same for longer."""
    from weightvault.testing.load import run_load

    report = run_load(tmp_path, seconds=30, writers=8, rate=0.05)
    assert report.acked >= 8 and report.restored_identical >= 8, report
    assert sum(v for k, v in report.faults.items() if k != "requests") > 0  # the faults really happened
    assert not report.problems, "\n".join(report.problems)


def test_a_real_full_disk_at_sampled_steps_of_a_backup_and_a_restore_loses_nothing(tmp_path: Path) -> None:
    """bench/torture.py --campaign disk runs 12 steps of each."""
    import pytest

    from weightvault.testing.fulldisk import run_full_disk

    report = run_full_disk(tmp_path, steps=3)
    if report.skipped:
        pytest.skip(report.skipped)
    assert {t.op for t in report.tries} == {"backup", "restore"} and len(report.tries) == 6
    assert all(t.exit_code == 15 for t in report.tries if t.free < report.needed[t.op] // 2)  # the wall was hit
    assert not report.failures, "\n".join(f"{t.op} {t.free}: {t.problems}" for t in report.failures)
