"""The dashboard's pieces without a browser: what a stored file's tensors are, how two checkpoints
differ tensor by tensor, the RPO colours, runs, activity filters and the SVG charts."""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import FAST_KDF, PASSWORD, write
from weightvault.api import Repository, RpoLine, Snapshot
from weightvault.web import views
from weightvault.web.charts import Series, human_bytes, line_chart
from weightvault.web.site import age_text


def _model(path: Path, tensors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)


def test_tensors_of_stored_files(repo: Repository, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    run = tmp_path / "run"
    _model(run / "model.safetensors", {"w": rng.standard_normal((128, 96), dtype=np.float32),
                                      "b": np.zeros(96, dtype=np.float16)})
    buf = io.BytesIO()
    np.savez(buf, emb=np.ones((4, 8), dtype=np.int64))
    write(run / "arrays.npz", buf.getvalue())
    write(run / "notes.txt", b"not a model")
    snap = repo.backup([run]).snapshot
    table = repo.tensors(snap.id, "run/model.safetensors")
    assert table.format == "safetensors"
    assert {(t.name, t.dtype, t.shape, t.nbytes) for t in table.tensors} == {
        ("w", "F32", (128, 96), 128 * 96 * 4), ("b", "F16", (96,), 192)}
    npz = repo.tensors(snap.id, "run/arrays.npz")
    assert npz.format == "npz" and [(t.shape, t.nbytes) for t in npz.tensors] == [((4, 8), 256)]
    text = repo.tensors(snap.id, "run/notes.txt")
    assert text.format is None and text.tensors == []
    with pytest.raises(Exception, match="has no file"):
        repo.tensors(snap.id, "run/missing.bin")


def _checkpoint(run: Path, step: int, tensors: dict[str, np.ndarray]) -> Path:
    d = run / f"checkpoint-{step}"
    _model(d / "model.safetensors", tensors)
    write(d / "config.json", b'{"hidden": 512}')
    return d


def test_tensor_diff_pairs_checkpoint_directories_and_names_changed_tensors(repo: Repository,
                                                                            tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    big = {f"layer{i}.weight": rng.standard_normal((256, 512), dtype=np.float32) for i in range(3)}
    big["layer1.bias"] = np.zeros(512, dtype=np.float32)
    a = repo.backup([_checkpoint(tmp_path / "run", 10, big)]).snapshot
    big["layer2.weight"] = big["layer2.weight"] + 1
    big["extra.weight"] = rng.standard_normal((256, 512), dtype=np.float32)
    b = repo.backup([_checkpoint(tmp_path / "run", 20, big)]).snapshot
    d = repo.tensor_diff(a.id, b.id)
    (model,) = [f for f in d.files if f.path.endswith("model.safetensors")]
    assert model.change == "M" and model.before == "checkpoint-10/model.safetensors" and model.tensor_aware
    assert model.changed == ["layer2.weight"] and model.added == ["extra.weight"] and model.removed == []
    assert model.unchanged == 3  # layer0/1 weights, layer1 bias
    assert d.unchanged_files == 1  # config.json, paired with checkpoint-10's
    new_bytes = 2 * 256 * 512 * 4  # two tensors' worth of new float32 data, compressed somewhat
    assert 0.5 * new_bytes < model.stored_added <= 1.05 * new_bytes and d.stored_added == model.stored_added
    same = repo.tensor_diff(b.id, b.id)
    assert same.files == [] and same.stored_added == 0


def test_a_change_in_a_small_tensor_is_reported_under_the_piece_that_holds_it(repo: Repository,
                                                                              tmp_path: Path) -> None:
    small = {"a.bias": np.zeros(64, dtype=np.float32), "b.bias": np.zeros(64, dtype=np.float32)}
    a = repo.backup([_checkpoint(tmp_path / "run", 1, small)]).snapshot
    small["b.bias"] = small["b.bias"] + 1
    b = repo.backup([_checkpoint(tmp_path / "run", 2, small)]).snapshot
    (model,) = [f for f in repo.tensor_diff(a.id, b.id).files if f.path.endswith(".safetensors")]
    # both biases share one piece, named after the first: the change shows there, flagged as grouped
    assert model.changed == ["a.bias"] and model.grouped == ["a.bias"]


def test_files_only_in_one_snapshot_are_added_or_removed(repo: Repository, tmp_path: Path) -> None:
    write(tmp_path / "d" / "keep.txt", b"k")
    write(tmp_path / "d" / "old.txt", b"o")
    a = repo.backup([tmp_path / "d"]).snapshot
    os.remove(tmp_path / "d" / "old.txt")
    write(tmp_path / "d" / "new.txt", b"n")
    b = repo.backup([tmp_path / "d"]).snapshot
    changes = {(f.change, f.path) for f in repo.tensor_diff(a.id, b.id).files}
    assert changes == {("+", "d/new.txt"), ("-", "d/old.txt")}


@pytest.mark.parametrize(("age", "rpo", "colour"), [(0, 3600, "green"), (2700, 3600, "green"),
                                                     (2701, 3600, "amber"), (3600, 3600, "amber"),
                                                     (3601, 3600, "red"), (None, 3600, "red"), (5, None, "grey")])
def test_rpo_colours(age: float | None, rpo: float | None, colour: str) -> None:
    assert views.colour(age, rpo) == colour


def _snap(tags: list[str], paths: list[str] | None = None, i: int = 0) -> Snapshot:
    s = Snapshot(time=(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(), host="h", user="u",
                 paths=paths or ["/runs/x"], tags=tags, tree=[])
    s.id = f"{i:064x}"
    return s


def test_runs_group_by_run_order_by_step_and_keep_numeric_tags() -> None:
    snaps = [_snap(["run=a", "step=20", "loss=0.5", "note=x"], i=1), _snap(["run=a", "step=10", "loss=0.9"], i=2),
             _snap(["run=b", "step=5", "eval_loss=nan"], i=3), _snap([], i=4), _snap(["step=3"], ["/r/c"], i=5)]
    runs = {r.name: r for r in views.runs(snaps)}
    assert set(runs) == {"a", "b", "c"}  # the untagged snapshot is no run's
    assert [c.step for c in runs["a"].checkpoints] == [10, 20]
    assert runs["a"].series_names == ["loss"] and runs["b"].series_names == []  # nan is no point


def test_activity_filters_newest_first() -> None:
    recs = [{"op": "backup", "ok": True, "n": 1}, {"op": "restore", "ok": False, "n": 2},
            {"op": "backup", "ok": False, "n": 3}]
    assert [r["n"] for r in views.activity(recs)] == [3, 2, 1]
    assert [r["n"] for r in views.activity(recs, op="backup", result="failed")] == [3]
    assert [r["n"] for r in views.activity(recs, result="ok")] == [1]


def test_charts_escape_and_draw_a_point_each() -> None:
    svg = line_chart([Series("<loss>", [(1, 2.0), (2, 1.5), (3, 1.0)]), Series("acc", [(1, 0.1)])],
                     x_label="step", y_label="v")
    assert svg.count('class="point"') == 4 and "<loss>" not in svg and "&lt;loss&gt;" in svg
    assert "style=" not in svg  # the page's CSP allows no inline style
    assert line_chart([], x_label="x", y_label="y") == '<p class="empty">nothing to chart yet</p>'
    ys = [float(m) for m in re.findall(r'cy="([0-9.]+)"', line_chart([Series("s", [(0, 5.0), (1, 5.0)])],
                                                                       x_label="x", y_label="y"))]
    assert len(ys) == 2 and ys[0] == ys[1]  # a flat series is drawn, not divided by zero


def test_sizes_and_ages_in_words() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(3 << 30) == "3.0 GiB"
    assert age_text(None) == "never" and age_text(-5) == "in the future"
    assert age_text(59) == "0m 59s" and age_text(3700) == "1h 01m" and age_text(90000) == "1d 1h"


def test_a_snapshot_by_format(repo: Repository, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    _model(tmp_path / "r" / "a.safetensors", {"w": rng.standard_normal((64, 64), dtype=np.float32)})
    write(tmp_path / "r" / "b.TXT", b"hello" * 100)
    write(tmp_path / "r" / "README", b"x")
    snap = repo.backup([tmp_path / "r"]).snapshot
    rows = {r.format: r for r in views.by_format(repo.ls(snap.id), repo.layouts(snap.id))}
    assert set(rows) == {".safetensors", ".txt", "(none)"}
    assert rows[".safetensors"].files == 1 and rows[".safetensors"].raw > 16384 and rows[".safetensors"].stored > 0
    assert rows[".txt"].raw == 500 and rows[".txt"].stored < 500  # compressed


def test_policy_rows_count_copies_sites_immutable_and_verified() -> None:
    def line(repo: str, site: str, role: str, verified: str | None) -> RpoLine:
        return RpoLine("run", "weights", repo, site, role, "2026-01-01T00:00:00+00:00", 600.0, 3600.0, False,
                       verified, 60.0 if verified else None)

    rows = views.policy_rows([line("hot", "dc1", "primary", None), line("cold", "dc2", "replica", "t"),
                              line("vault", "dc3", "replica", "t")], immutable={"vault"})
    assert [r.rule for r in rows] == ["3-3-2-1-2"] * 3 and {r.colour for r in rows} == {"green"}
    late = views.policy_rows([RpoLine("x", None, "hot", "dc1", "primary", None, None, 3600.0, True)])
    assert late[0].colour == "red" and late[0].rule == "1-1-0-0-0"
