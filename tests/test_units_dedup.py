"""Deduplication: run-length invariants, the unit statistics, the deduplicated file and the text export."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from units.dedup import UnitStats, deduplicate, list_parts, main, run_length, run_length_batch
from units.format import UnitsFileError, UnitsWriter, iter_units, read_units, read_units_meta


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
    with pytest.raises((ValueError, OSError), match="units file not found"):
        main([str(tmp_path / "missing.parquet"), str(tmp_path / "x.parquet"), "--stats", str(tmp_path / "s.json")])


def rowwise_reference(inp, out, vocab: int) -> dict:
    """The per-row implementation deduplicate had before batches: Python loop, one utterance at a time."""
    acc = UnitStats(vocab, 50.0)
    with UnitsWriter(out, vocab_size=vocab, deduplicated=True) as writer:
        for row in iter_units(inp):
            frames = row["units"]
            starts = np.concatenate([[0], np.flatnonzero(frames[1:] != frames[:-1]) + 1]) if frames.size else []
            units = frames[starts].astype(np.int32)
            durations = np.diff(np.append(starts, frames.size)).astype(np.int32)
            acc.add(frames, len(units))
            writer.write(row["id"], units, durations)
    return acc.result()


def random_units(rng: np.random.Generator, n: int, vocab: int) -> list[np.ndarray]:
    """Utterances with long and short runs, some empty, some one frame, neighbours sharing boundary units."""
    rows = []
    for _ in range(n):
        length = int(rng.choice([0, 1, 2, int(rng.integers(3, 200))]))
        rows.append(np.repeat(rng.integers(0, vocab, length), rng.integers(1, 5, length))[:length].astype(np.int32))
    for i in range(1, n, 3):  # the last unit of one utterance equals the first of the next: runs must not merge
        if rows[i].size and rows[i - 1].size:
            rows[i][0] = rows[i - 1][-1]
    return rows


@pytest.mark.parametrize("seed", range(4))
def test_run_length_batch_equals_per_utterance(seed):
    rng = np.random.default_rng(seed)
    rows = random_units(rng, 40, 6)
    offsets = np.concatenate([[0], np.cumsum([r.size for r in rows])])
    units, durations, run_offsets = run_length_batch(np.concatenate(rows), offsets)
    assert units.dtype == durations.dtype == run_offsets.dtype == np.int32 and run_offsets[0] == 0
    for i, frames in enumerate(rows):
        expected = run_length(frames)
        np.testing.assert_array_equal(units[run_offsets[i]:run_offsets[i + 1]], expected[0])
        np.testing.assert_array_equal(durations[run_offsets[i]:run_offsets[i + 1]], expected[1])
        np.testing.assert_array_equal(np.repeat(*expected), frames)


def test_list_parts_of_a_sliced_column():
    column = pa.array([[1, 1], [], [2, 3, 3], [4]], pa.list_(pa.int32())).slice(1, 3)
    values, offsets = list_parts(column, "f.parquet")
    assert values.tolist() == [2, 3, 3, 4] and offsets.tolist() == [0, 0, 3, 4]
    with pytest.raises(UnitsFileError, match=r"f\.parquet: 1 utterance\(s\) with null units"):
        list_parts(pa.array([[1], None], pa.list_(pa.int32())), "f.parquet")


@pytest.mark.parametrize(("seed", "batch_size"), [(0, 1024), (1, 7), (2, 1)])
def test_batched_dedup_equals_the_rowwise_result(tmp_path, seed, batch_size):
    rng = np.random.default_rng(seed)
    rows = random_units(rng, 300, 50)
    with UnitsWriter(tmp_path / "f.parquet", vocab_size=50, rows_per_group=64) as w:  # batches cross row groups
        for i, units in enumerate(rows):
            w.write(f"spk{i % 3}/utt{i}", units)
    expected = rowwise_reference(tmp_path / "f.parquet", tmp_path / "ref.parquet", 50)
    stats = deduplicate(tmp_path / "f.parquet", tmp_path / "d.parquet", tmp_path / "s.json", batch_size=batch_size)
    assert {k: v for k, v in stats.items() if k not in ("provenance", "units_config", "warnings")} == expected
    ref, out = read_units(tmp_path / "ref.parquet"), read_units(tmp_path / "d.parquet")
    assert out["id"].tolist() == ref["id"].tolist() == [f"spk{i % 3}/utt{i}" for i in range(len(rows))]
    for column in ("units", "durations"):
        for a, b in zip(out[column], ref[column], strict=True):
            assert a.dtype == b.dtype == np.int32
            np.testing.assert_array_equal(a, b)
    assert read_units_meta(tmp_path / "d.parquet")["deduplicated"]


def test_out_of_range_units_name_the_file(tmp_path):
    with UnitsWriter(tmp_path / "f.parquet", vocab_size=4) as w:
        w.write("a", [1, 2, 9])
    with pytest.raises(UnitsFileError, match=r"f\.parquet: unit values outside \[0, 4\): min 1, max 9"):
        deduplicate(tmp_path / "f.parquet", tmp_path / "d.parquet", tmp_path / "s.json")
    assert not (tmp_path / "d.parquet").exists()
