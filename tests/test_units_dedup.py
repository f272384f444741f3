"""Deduplication: run-length invariants, the unit statistics, the deduplicated file and the text export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from units.dedup import UnitStats, deduplicate, main, run_length
from units.format import UnitsFileError, UnitsWriter, read_units, read_units_meta


@pytest.mark.parametrize("seed", range(5))
def test_run_length_invariants(seed):
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 5, 40), rng.integers(1, 6, 40)).astype(np.int32)
    units, durations = run_length(frames)
    assert durations.sum() == frames.size and (durations >= 1).all()
    assert (units[1:] != units[:-1]).all()
    np.testing.assert_array_equal(np.repeat(units, durations), frames)
    assert units.dtype == durations.dtype == np.int32


def test_run_length_edge_cases():
    assert [a.tolist() for a in run_length(np.array([], dtype=np.int32))] == [[], []]
    assert [a.tolist() for a in run_length(np.array([7]))] == [[7], [1]]
    assert [a.tolist() for a in run_length(np.array([3, 3, 3]))] == [[3], [3]]
    assert [a.tolist() for a in run_length(np.array([1, 2, 2, 1, 1, 1, 2]))] == [[1, 2, 1, 2], [1, 2, 3, 1]]


def test_unit_stats_by_hand():
    acc = UnitStats(vocab_size=8, frame_rate=50.0)
    for frames in ([1, 1, 2, 2, 2, 1], [5, 5, 5, 5]):
        arr = np.array(frames)
        acc.add(arr, len(run_length(arr)[0]))
    s = acc.result()
    assert (s["utterances"], s["frames"], s["dedup_units"], s["active_units"]) == (2, 10, 4, 3)
    assert s["seconds"] == pytest.approx(0.2)
    assert s["dedup_units_per_second"] == pytest.approx(4 / 0.2)
    assert s["bitrate"] == pytest.approx(3 * 20.0)  # log2(8) bits x 20 units/s
    assert s["mean_run_length"] == pytest.approx(2.5)
    p = np.array([3, 3, 4]) / 10
    assert s["perplexity"] == pytest.approx(2 ** float(-(p * np.log2(p)).sum()))
    with pytest.raises(UnitsFileError, match="outside \\[0, 8\\)"):
        acc.add(np.array([9]), 1)


def test_deduplicate_file_stats_and_text(tmp_path):
    rng = np.random.default_rng(0)
    rows = {f"u{i}": np.repeat(rng.integers(0, 16, 30), rng.integers(1, 4, 30)) for i in range(5)}
    with UnitsWriter(tmp_path / "f.parquet", vocab_size=16, provenance={"config": {"layer": 6}}) as w:
        for uid, units in rows.items():
            w.write(uid, units)
    main([str(tmp_path / "f.parquet"), str(tmp_path / "d.parquet"), "--stats", str(tmp_path / "s.json"),
          "--text", str(tmp_path / "d.txt")])
    out = read_units(tmp_path / "d.parquet")
    meta = read_units_meta(tmp_path / "d.parquet")
    assert meta["deduplicated"] and meta["vocab_size"] == 16 and meta["frame_rate"] == 50.0
    assert meta["provenance"]["source"]["config"] == {"layer": 6}
    assert out["id"].tolist() == list(rows)
    for uid, units, durations in zip(out["id"], out["units"], out["durations"], strict=True):
        np.testing.assert_array_equal(np.repeat(units, durations), rows[uid])
    stats = json.loads((tmp_path / "s.json").read_text())
    frames = sum(len(u) for u in rows.values())
    runs = sum(len(run_length(u)[0]) for u in rows.values())
    assert stats["frames"] == frames and stats["dedup_units"] == runs
    assert stats["bitrate"] == pytest.approx(math.log2(16) * runs / (frames / 50))
    assert stats["units_config"] == {"layer": 6} and "code_version" in stats["provenance"]
    lines = (tmp_path / "d.txt").read_text().splitlines()
    assert lines[0] == "u0\t" + " ".join(map(str, out["units"][0].tolist()))
    assert len(lines) == 5


def test_deduplicating_twice_is_an_error(tmp_path):
    with UnitsWriter(tmp_path / "d.parquet", vocab_size=4, deduplicated=True) as w:
        w.write("a", [1, 2], [2, 1])
    with pytest.raises(UnitsFileError, match="already deduplicated"):
        deduplicate(tmp_path / "d.parquet", tmp_path / "e.parquet", tmp_path / "s.json")
    with pytest.raises(SystemExit, match="units file not found"):
        main([str(tmp_path / "missing.parquet"), str(tmp_path / "x.parquet"), "--stats", str(tmp_path / "s.json")])
