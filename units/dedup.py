"""Deduplication of frame-level units into runs with durations, and the unit statistics the paper reports.

Usage: python -m units.dedup IN.parquet OUT.parquet --stats STATS.json [--text OUT.txt]

Streams IN record batch by record batch (memory flat in corpus size); each batch is run-length encoded at once with
NumPy over its flattened values and list offsets, never row by row in Python.

OUT holds, per utterance, the run-length `units` and their `durations` in frames (sum == frame count of IN), in
the units.format format. STATS (JSON, with provenance) is computed on IN:
  active_units      distinct units used (of vocab_size)
  perplexity        2 ** entropy (bits) of the frame-level unit distribution
  dedup_units_per_second, mean_run_length (frames per run)
  bitrate           log2(vocab_size) x deduplicated units per second (SpidR's definition, 20 ms frames at 50 Hz)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.io import atomic_write_json, provenance
from units.format import UnitsFileError, UnitsWriter, collapse_warning, read_units_meta, write_text_units


def run_length_batch(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encoding of many utterances at once, runs never crossing an utterance boundary.

    values: every frame of the utterances, concatenated; offsets: n + 1 positions, utterance i being
    values[offsets[i]:offsets[i + 1]]. Returns (units of each run, run lengths, n + 1 run offsets), all int32.
    """
    values, offsets = np.asarray(values), np.asarray(offsets, dtype=np.int64)
    size = values.size
    start = np.ones(size, dtype=bool)
    np.not_equal(values[1:], values[:-1], out=start[1:])
    start[offsets[:-1][offsets[:-1] < size]] = True  # each utterance opens a run (empty ones open none)
    starts = np.flatnonzero(start)
    durations = np.diff(np.append(starts, size))
    run_offsets = np.searchsorted(starts, offsets)  # runs that start before each utterance
    return values[starts].astype(np.int32), durations.astype(np.int32), run_offsets.astype(np.int32)


def run_length(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive repeats of one utterance merged: (units of each run, run lengths). Empty in, empty out."""
    units = np.asarray(units)
    runs, durations, _ = run_length_batch(units, np.array([0, units.size]))
    return runs, durations


def list_parts(column: pa.Array, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A list<int32> column of a record batch as (flattened values, offsets from 0), without per-row Python."""
    if column.null_count:
        raise UnitsFileError(f"{path}: {column.null_count} utterance(s) with null units")
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0]


class UnitStats:
    """Streaming accumulator of the statistics above (memory: one count per vocabulary entry)."""

    def __init__(self, vocab_size: int, frame_rate: float) -> None:
        self.vocab_size, self.frame_rate = int(vocab_size), float(frame_rate)
        self.counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.utterances = self.frames = self.runs = 0

    def add(self, units: np.ndarray, runs: int, utterances: int = 1) -> None:
        """Frames `units` (of one utterance, or of several concatenated) that make `runs` runs."""
        if units.size and (units.min() < 0 or units.max() >= self.vocab_size):
            raise UnitsFileError(f"unit values outside [0, {self.vocab_size}): min {units.min()}, max {units.max()}")
        self.counts += np.bincount(units, minlength=self.vocab_size)
        self.utterances += int(utterances)
        self.frames += int(units.size)
        self.runs += int(runs)

    def result(self) -> dict[str, Any]:
        seconds = self.frames / self.frame_rate
        p = self.counts[self.counts > 0] / max(self.frames, 1)
        entropy = float(-(p * np.log2(p)).sum()) if self.frames else 0.0
        dedup_rate = self.runs / seconds if seconds else 0.0
        return {
            "utterances": self.utterances,
            "frames": self.frames,
            "seconds": seconds,
            "frame_rate": self.frame_rate,
            "vocab_size": self.vocab_size,
            "active_units": int((self.counts > 0).sum()),
            "entropy_bits": entropy,
            "perplexity": 2.0 ** entropy,
            "dedup_units": self.runs,
            "dedup_units_per_second": dedup_rate,
            "mean_run_length": self.frames / self.runs if self.runs else 0.0,
            "bitrate": math.log2(self.vocab_size) * dedup_rate,
        }


def deduplicate(inp: str | Path, out: str | Path, stats: str | Path, text: str | Path | None = None, *,
                batch_size: int = 1024) -> dict[str, Any]:
    """Write OUT (runs + durations) and STATS from the frame-level units file IN, `batch_size` rows at a time."""
    meta = read_units_meta(inp)
    if meta.get("deduplicated"):
        raise UnitsFileError(f"{inp}: already deduplicated; deduplication needs frame-level units")
    vocab, rate = int(meta["vocab_size"]), float(meta["frame_rate"])
    acc = UnitStats(vocab, rate)
    config = {"input": str(inp)}
    source = meta.get("provenance", {})
    prov = {**provenance(config), "source": source}
    with UnitsWriter(out, vocab_size=vocab, frame_rate=rate, deduplicated=True, provenance=prov) as writer:
        for batch in pq.ParquetFile(inp).iter_batches(batch_size=batch_size, columns=["id", "units"]):
            values, offsets = list_parts(batch.column("units"), inp)
            units, durations, run_offsets = run_length_batch(values, offsets)
            try:
                acc.add(values, len(units), batch.num_rows)
            except UnitsFileError as err:
                raise UnitsFileError(f"{inp}: {err}") from None
            run_offsets = pa.array(run_offsets, pa.int32())
            writer.write_batch(pa.RecordBatch.from_arrays(
                [batch.column("id"), pa.ListArray.from_arrays(run_offsets, pa.array(units, pa.int32())),
                 pa.ListArray.from_arrays(run_offsets, pa.array(durations, pa.int32()))],
                names=["id", "units", "durations"]))
    result = {**acc.result(), "units_config": source.get("config"), "provenance": provenance(config)}
    collapsed = collapse_warning(result["active_units"], vocab, str(inp))
    result["warnings"] = [collapsed] if collapsed else []
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    atomic_write_json(stats, result)
    if text is not None:
        write_text_units(out, text)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="frame-level units (units.extract units)")
    parser.add_argument("output", type=Path, help="deduplicated units with durations")
    parser.add_argument("--stats", type=Path, required=True, help="unit statistics JSON")
    parser.add_argument("--text", type=Path, help="also export the deduplicated units as `id<TAB>u1 u2 ...` lines")
    args = parser.parse_args(argv)
    stats = deduplicate(args.input, args.output, args.stats, args.text)
    print(f"dedup: {stats['utterances']} utterances, {stats['active_units']}/{stats['vocab_size']} active units, "
          f"{stats['dedup_units_per_second']:.1f} units/s, bitrate {stats['bitrate']:.1f} bit/s", file=sys.stderr)


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
