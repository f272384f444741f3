"""Deduplication of frame-level units into runs with durations, and the unit statistics the paper reports.

Usage: python -m units.dedup IN.parquet OUT.parquet --stats STATS.json [--text OUT.txt]

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

from common.io import atomic_write_json, provenance
from units.format import UnitsFileError, UnitsWriter, iter_units, read_units_meta, write_text_units


def run_length(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive repeats merged: (units of each run, run lengths). Empty in, empty out."""
    units = np.asarray(units)
    if units.size == 0:
        return units.astype(np.int32), np.zeros(0, dtype=np.int32)
    starts = np.concatenate([[0], np.flatnonzero(units[1:] != units[:-1]) + 1])
    durations = np.diff(np.append(starts, units.size))
    return units[starts].astype(np.int32), durations.astype(np.int32)


class UnitStats:
    """Streaming accumulator of the statistics above (memory: one count per vocabulary entry)."""

    def __init__(self, vocab_size: int, frame_rate: float) -> None:
        self.vocab_size, self.frame_rate = int(vocab_size), float(frame_rate)
        self.counts = np.zeros(self.vocab_size, dtype=np.int64)
        self.utterances = self.frames = self.runs = 0

    def add(self, units: np.ndarray, runs: int) -> None:
        if units.size and (units.min() < 0 or units.max() >= self.vocab_size):
            raise UnitsFileError(f"unit values outside [0, {self.vocab_size}): min {units.min()}, max {units.max()}")
        self.counts += np.bincount(units, minlength=self.vocab_size)
        self.utterances += 1
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


def deduplicate(inp: str | Path, out: str | Path, stats: str | Path, text: str | Path | None = None) -> dict[str, Any]:
    """Write OUT (runs + durations) and STATS from the frame-level units file IN, streaming."""
    meta = read_units_meta(inp)
    if meta.get("deduplicated"):
        raise UnitsFileError(f"{inp}: already deduplicated; deduplication needs frame-level units")
    vocab, rate = int(meta["vocab_size"]), float(meta["frame_rate"])
    acc = UnitStats(vocab, rate)
    config = {"input": str(inp)}
    source = meta.get("provenance", {})
    prov = {**provenance(config), "source": source}
    with UnitsWriter(out, vocab_size=vocab, frame_rate=rate, deduplicated=True, provenance=prov) as writer:
        for row in iter_units(inp):
            units, durations = run_length(row["units"])
            acc.add(row["units"], len(units))
            writer.write(row["id"], units, durations)
    result = {**acc.result(), "units_config": source.get("config"), "provenance": provenance(config)}
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
    try:
        stats = deduplicate(args.input, args.output, args.stats, args.text)
    except UnitsFileError as err:
        sys.exit(f"error: {err}")
    print(f"dedup: {stats['utterances']} utterances, {stats['active_units']}/{stats['vocab_size']} active units, "
          f"{stats['dedup_units_per_second']:.1f} units/s, bitrate {stats['bitrate']:.1f} bit/s", file=sys.stderr)


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
