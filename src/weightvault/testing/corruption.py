"""The corruption campaign: every kind of stored object flipped, truncated and deleted.

A prepared repository (two snapshots of a small training run, small packs, its ledger) and a
replica that ``copy`` filled from it. For each kind of object (``KINDS``: config, key files,
packs, index files, snapshots, ledger records) and each of a sample of its objects, one change
at a time on a fresh copy: a single bit flipped at a random offset (several tries), the object
truncated to half, the object deleted. Then, as a user would:

* open the repository: a refusal is a clear weightvault error (exit code and message);
* ``check --read-data`` must report the change (an error, or for a deleted snapshot the warning
  that the ledger made it and no forget removed it) and name the object it hit;
* every snapshot still listed is restored: it restores byte-identical or fails with a
  weightvault error; **wrong bytes are never written** (the one outcome that must never occur);
* ``check --repair-from`` the replica (``heal_from``) and ``check --read-data`` again: what was
  healed is counted (blobs in packs can be rewritten from a replica; a lost index file or
  snapshot document is not what healing restores: ``repair index`` and ``copy`` do).

    from weightvault.testing.corruption import run_corruption
    report = run_corruption(work_dir, objects=3, flips=3)
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault.backends.local import LocalBackend
from weightvault.repository.repo import Repository as Engine
from weightvault.testing.torture import NEW_PASSWORD, PASSWORD, _digest, _write_version

__all__ = ["KINDS", "CorruptionReport", "Damage", "run_corruption"]

KINDS = ("config", "keys", "packs", "index", "snapshots", "ledger")
_DIRS = {"keys": "keys", "packs": "data", "index": "index", "snapshots": "snapshots", "ledger": "ledger"}
_SMALL = {"chunk_min": 16 * 1024, "chunk_avg": 64 * 1024, "chunk_max": 256 * 1024, "pack_size": 256 * 1024}


@dataclass
class Damage:
    kind: str
    name: str
    change: str  # "flip at N bit B", "truncate to N", "delete"
    detected: bool = False
    named: bool = False
    how: str = ""  # the first words check (or open) said
    restores_ok: int = 0  # snapshots restored byte-identical
    restores_refused: int = 0  # snapshots whose restore failed with a clear error
    wrong_bytes: int = 0  # snapshots restored with other bytes than their source: must stay 0
    healed: bool | None = None  # check clean after healing from the replica (None: not tried)
    how_healed: str = ""  # "heal from the replica" or "repair index"
    harmless: bool = False  # a config change that touches no data (the config is unauthenticated by design)
    problems: list[str] = field(default_factory=list)


@dataclass
class CorruptionReport:
    damages: list[Damage] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Damage]:
        """Undetected or unnamed (unless harmless), wrong bytes, or anything that was not a clear error."""
        return [d for d in self.damages
                if d.problems or d.wrong_bytes or (not d.harmless and not (d.detected and d.named))]


def _prepare(root: Path, kdf: object) -> tuple[Path, Path, Path, dict[str, dict[str, str]]]:
    from weightvault import api

    repo_dir, replica_dir, src = root / "repo", root / "replica", root / "src" / "run"
    Engine.init(LocalBackend(str(repo_dir)), PASSWORD.encode(), kdf=kdf, **_SMALL)  # type: ignore[arg-type]
    Engine.init(LocalBackend(str(replica_dir)), NEW_PASSWORD.encode(), kdf=kdf, **_SMALL)  # type: ignore[arg-type]
    repo = api.Repository.open(repo_dir, PASSWORD)
    versions = {}
    for v in (1, 2):
        _write_version(src, v)
        repo.backup([src], tags=[f"v={v}"])
        versions[f"v={v}"] = _digest(src)
    repo.copy_to(api.Repository.open(replica_dir, NEW_PASSWORD))
    return repo_dir, replica_dir, src, versions


def _objects(repo_dir: Path, kind: str) -> list[Path]:
    if kind == "config":
        return [repo_dir / "config"]
    return sorted(p for p in (repo_dir / _DIRS[kind]).rglob("*") if p.is_file())


def _changes(path: Path, flips: int, rng: random.Random) -> list[tuple[str, Callable[[Path], None]]]:
    size = path.stat().st_size
    out: list[tuple[str, Callable[[Path], None]]] = []
    for _ in range(flips):
        at, bit = rng.randrange(size), rng.randrange(8)

        def flip(p: Path, at: int = at, bit: int = bit) -> None:
            data = bytearray(p.read_bytes())
            data[at] ^= 1 << bit
            p.write_bytes(bytes(data))
        out.append((f"flip at {at} bit {bit}", flip))

    def truncate(p: Path) -> None:
        p.write_bytes(p.read_bytes()[: size // 2])
    out.append((f"truncate to {size // 2}", truncate))
    out.append(("delete", lambda p: p.unlink()))
    return out


def _judge(d: Damage, world: Path, versions: dict[str, dict[str, str]]) -> None:
    from weightvault import api
    from weightvault.errors import WeightvaultError

    try:
        repo = api.Repository.open(world / "repo", PASSWORD)
    except WeightvaultError as exc:
        d.detected, d.how = True, f"open refused (exit {exc.exit_code}): {exc.message}"
        d.named = True  # nothing opens, so nothing can be misread: the message says what is wrong
        return
    res = repo.check(read_data=True)
    said = res.errors + [w for w in res.warnings if "is gone" in w or "is not indexed" in w]
    d.detected = bool(res.errors) or any("is gone" in w for w in res.warnings)
    d.how = said[0][:200] if said else "(check reported nothing)"
    # a deleted index file has no name left anywhere: check names the packs it described
    d.named = any(d.name in s or d.name[:8] in s for s in said) or (
        d.kind == "index" and d.change == "delete" and any("is not indexed" in s for s in said))
    for snap in repo.snapshots():
        tag = next((t for t in snap.tags if t in versions), None)
        out = world / f"out-{snap.short_id}"
        try:
            repo.restore(snap.id, out)
        except WeightvaultError:
            d.restores_refused += 1
            continue
        finally:
            got = _digest(out / "run") if (out / "run").is_dir() else None
            subprocess.run(["rm", "-rf", str(out)], check=False)
        if tag is None or got != versions[tag]:
            d.wrong_bytes += 1
            d.problems.append(f"snapshot {snap.short_id} restored without an error but with other bytes")
        else:
            d.restores_ok += 1
    if d.kind == "config" and not d.detected and d.restores_ok == len(versions) and not d.restores_refused:
        d.harmless = True  # FORMAT.md section 2: chunking, pack size, compression only shape new backups
    if res.errors:
        _heal(d, repo, api.Repository.open(world / "replica", NEW_PASSWORD))


def _heal(d: Damage, repo: Any, replica: Any) -> None:
    """What a user runs next: heal from the replica; where that is not enough (or it refuses, as it
    does over an unreadable index file, saying "run `weightvault repair index` first"), rebuild
    the index and heal again."""
    from weightvault.errors import WeightvaultError

    try:
        repo.heal_from(replica)
        d.healed = repo.check(read_data=True).ok
    except WeightvaultError:
        d.healed = False
    if d.healed:
        d.how_healed = "heal from the replica"
        return
    if d.kind not in ("index", "packs"):
        return
    try:
        repo.repair_index()
        d.healed = repo.check(read_data=True).ok
        if not d.healed:
            repo.heal_from(replica)
            d.healed = repo.check(read_data=True).ok
        d.how_healed = "repair index" if d.healed else ""
    except WeightvaultError:
        d.healed = False


def run_corruption(work: Path, objects: int = 3, flips: int = 3, seed: int = 20261203, kdf: object = None,
                   kinds: tuple[str, ...] = KINDS,
                   progress: Callable[[Damage], None] | None = None) -> CorruptionReport:
    """``objects`` objects of each kind, each changed ``flips`` times by a bit flip, once
    truncated and once deleted (each on a fresh copy); see the module docstring. The ledger
    catalog (``$XDG_CACHE_HOME``) is the world's own while it runs."""
    import time

    t0 = time.monotonic()
    rng = random.Random(seed)
    template = work / "template"
    cache_before = os.environ.get("XDG_CACHE_HOME")
    try:
        return _campaign(work, template, objects, flips, rng, kdf, kinds, progress, t0)
    finally:
        if cache_before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = cache_before


def _campaign(work: Path, template: Path, objects: int, flips: int, rng: random.Random, kdf: object,
              kinds: tuple[str, ...], progress: Callable[[Damage], None] | None, t0: float) -> CorruptionReport:
    import time

    from weightvault import api
    from weightvault.api import KdfParams
    from weightvault.errors import WeightvaultError

    os.environ["XDG_CACHE_HOME"] = str(template / "cache")
    repo_dir, _replica, _src, versions = _prepare(template, kdf or KdfParams(time_cost=1, memory_kib=8192,
                                                                             parallelism=1))
    os.environ["XDG_CACHE_HOME"] = str(work / "world" / "cache")  # the template's, copied with each world
    report = CorruptionReport()
    for kind in kinds:
        found = _objects(repo_dir, kind)
        for path in rng.sample(found, min(objects, len(found))):
            rel = path.relative_to(repo_dir)
            for change, apply in _changes(path, flips, rng):
                world = work / "world"
                shutil.copytree(template, world, symlinks=True)
                d = Damage(kind, path.name, change)
                try:
                    api.Repository.open(world / "repo", PASSWORD).check()  # a user's earlier check, here
                    apply(world / "repo" / rel)
                    _judge(d, world, versions)
                except WeightvaultError as exc:
                    d.problems.append(f"an unexpected weightvault error outside the checks: {exc.message}")
                except Exception as exc:  # a crash is what the campaign looks for
                    d.problems.append(f"crashed: {type(exc).__name__}: {exc}")
                finally:
                    subprocess.run(["rm", "-rf", str(world)], check=False)
                report.damages.append(d)
                if progress is not None:
                    progress(d)
    report.seconds = time.monotonic() - t0
    return report
