"""A chunk's next version is coded the way the chunk was (codec.compress ``Decision``), without a
sample, for a few versions in a row; a wrong prior falls back to the sample; every result still
round-trips and stays within its bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write
from weightvault.api import Repository
from weightvault.codec import compress
from weightvault.codec.compress import (
    BYTEPLANE,
    DELTA,
    PRIOR_REUSES,
    Decision,
    DecisionMemo,
    compress_chunk,
    decompress,
)

N = 1024 * 1024  # F32 elements: 4 MiB chunks, sampled


@pytest.fixture
def samples(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the chunks decided from a sample."""
    seen: list[int] = []
    real = compress._Sample.__init__

    def counting(self: compress._Sample, data: bytes | memoryview, *args: object, **kw: object) -> None:
        seen.append(len(data))
        real(self, data, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(compress._Sample, "__init__", counting)
    return seen


def _series(versions: int, seed: int = 1) -> list[bytes]:
    """A drifting F32 tensor, one version per training step."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, N).astype(np.float32)
    out = []
    for _ in range(versions):
        w = w + rng.normal(0, 1e-4, N).astype(np.float32) * (rng.random(N) < 0.05)
        out.append(w.tobytes())
    return out


def _code(series: list[bytes]) -> list[tuple[int, bytes, Decision | None]]:
    out: list[tuple[int, bytes, Decision | None]] = []
    prior: Decision | None = None
    for i, data in enumerate(series):
        base = (bytes([i]) * 32, series[i - 1]) if i else None
        codec, payload, decision = compress_chunk(data, 3, "F32", True, base, True, prior)
        assert decompress(codec, payload, len(data), base[1] if base else None) == data
        assert len(payload) <= len(data)
        out.append((codec, payload, decision))
        prior = decision
    return out


def test_a_delta_decision_is_reused_for_the_next_versions_then_sampled_again(samples: list[int]) -> None:
    series = _series(2 + 2 * (PRIOR_REUSES + 1))
    coded = _code(series)
    assert [c for c, _, _ in coded] == [BYTEPLANE] + [DELTA] * (len(series) - 1)
    assert coded[0][2] is None  # no base: nothing to reuse
    # version 0 and 1 sampled, then PRIOR_REUSES reused, one sampled, PRIOR_REUSES reused, ...
    sampled = [i for i, (_, _, d) in enumerate(coded) if d is not None and d.reuses == 0]
    assert sampled == [1, 2 + PRIOR_REUSES, 3 + 2 * PRIOR_REUSES]
    assert len(samples) == 1 + len(sampled)


def test_reuse_costs_almost_nothing_in_size(samples: list[int]) -> None:
    series = _series(6)
    reused = sum(len(p) for _, p, _ in _code(series))
    fresh = 0
    for i, data in enumerate(series):
        base = (bytes([i]) * 32, series[i - 1]) if i else None
        fresh += len(compress_chunk(data, 3, "F32", True, base, True, None)[1])
    assert reused <= fresh * 1.01  # measured: within 0.1 %


def test_a_standalone_decision_skips_the_delta_trial(samples: list[int]) -> None:
    rng = np.random.default_rng(3)
    unrelated = [rng.normal(0, 0.05, N).astype(np.float32).tobytes() for _ in range(4)]
    coded = _code(unrelated)
    assert [c for c, _, _ in coded] == [BYTEPLANE] * 4
    first = coded[1][2]
    assert first is not None and not first.kept and first.reuses == 0
    assert coded[2][2] is not None and coded[2][2].reuses == 1
    assert len(samples) == 2  # versions 0 and 1; 2 and 3 coded from the decision


def test_a_wrong_delta_prior_falls_back_to_the_sample(samples: list[int]) -> None:
    rng = np.random.default_rng(4)
    data = rng.normal(0, 0.05, N).astype(np.float32).tobytes()
    noise = rng.normal(0, 0.05, N).astype(np.float32).tobytes()
    liar = Decision(sub=True, alone=0.7, delta=0.1, kept=True)  # a delta that pays, it says
    codec, payload, decision = compress_chunk(data, 3, "F32", True, (b"\x07" * 32, noise), True, liar)
    assert codec == BYTEPLANE and decision is not None and not decision.kept
    assert len(samples) == 1
    assert payload == compress_chunk(data, 3, "F32", True, (b"\x07" * 32, noise), True, None)[1]


@settings(max_examples=25, deadline=None)
@given(st.booleans(), st.floats(0.05, 1.2), st.floats(0.05, 1.2), st.booleans(), st.booleans(),
       st.integers(0, PRIOR_REUSES), st.floats(0, 1), st.integers(0, 2**31))
def test_any_prior_gives_a_correct_bounded_result(sub: bool, alone: float, delta: float, kept: bool, zstd: bool,
                                                  reuses: int, change: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 80 * 1024
    base = rng.normal(0, 0.05, n).astype(np.float32)
    data = base.copy()
    mask = rng.random(n) < change
    data[mask] += rng.normal(0, 0.01, int(mask.sum())).astype(np.float32)
    prior = Decision(sub, alone, delta, kept, zstd, reuses)
    codec, payload, _ = compress_chunk(data.tobytes(), 3, "F32", True, (b"\x02" * 32, base.tobytes()), True, prior)
    assert len(payload) <= len(data.tobytes())
    assert decompress(codec, payload, 4 * n, base.tobytes()) == data.tobytes()


def test_the_memo_keeps_the_newest_decisions() -> None:
    memo = DecisionMemo(capacity=3)
    d = Decision(False, 0.8, 0.5, True)
    for i in range(5):
        memo.put(bytes([i]) * 32, d)
    memo.put(b"\x09" * 32, None)
    assert [memo.get(bytes([i]) * 32) for i in range(5)] == [None, None, d, d, d]
    assert memo.get(b"\x09" * 32) is None


def test_a_backed_up_series_reuses_decisions_and_restores_identical(tmp_path: Path, samples: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One checkpoint per backup, as a training run saves them, through one open repository."""
    from test_delta import make_repo, safetensors_bytes

    series = _series(6, seed=9)

    def run(name: str) -> Repository:
        repo = make_repo(tmp_path / name / "repo")
        for i, data in enumerate(series):
            arr = np.frombuffer(data, dtype=np.float32)
            write(tmp_path / name / "src" / f"checkpoint-{i:03d}" / "model.safetensors",
                  safetensors_bytes({"w": ("F32", arr)}))
            repo.backup([tmp_path / name / "src"])
        return repo

    repo = run("reusing")
    reusing = len(samples)
    samples.clear()
    with monkeypatch.context() as m:
        m.setattr(DecisionMemo, "get", lambda self, blob_id: None)
        run("sampling")
    assert len(samples) == 6 and reusing == 2  # versions 0 and 1 sampled, 2-5 coded from the decision
    out = tmp_path / "out"
    repo.restore("latest", out)
    for i in range(len(series)):
        rel = Path("src") / f"checkpoint-{i:03d}" / "model.safetensors"
        assert (out / rel).read_bytes() == (tmp_path / "reusing" / rel).read_bytes()
