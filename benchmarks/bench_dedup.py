"""Deduplication throughput (frames per second through `units.dedup.deduplicate`), printed as JSON.

Usage: python -m benchmarks.bench_dedup [--frames 2500000] [--vocab 256] [--repeats 3] [--seed 0]

Builds a frame-level units file of synthetic utterances (2-20 s at 50 Hz, runs of 1-6 frames as k-means units
have) once, then deduplicates it `--repeats` times and reports the best wall time and process CPU time as frames
(units) per second, and the peak RSS of the process (building the file and deduplicating it, both streamed). The
sha256 of the deduplicated units lets two runs (before / after a change) be checked for the same output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from units.dedup import deduplicate
from units.format import UnitsWriter, read_units


def write_corpus(path: Path, frames: int, vocab: int, seed: int) -> int:
    """A units file of about `frames` frames; returns the exact count."""
    rng = np.random.default_rng(seed)
    total, i = 0, 0
    with UnitsWriter(path, vocab_size=vocab) as writer:
        while total < frames:
            length = int(rng.integers(100, 1000))  # 2-20 s at 50 Hz
            runs = rng.integers(1, 7, length)  # more runs than needed, cut below
            units = np.repeat(rng.integers(0, vocab, length), runs)[:length]
            writer.write(f"utt{i:07d}", units)
            total += length
            i += 1
    return total


def digest(path: Path) -> str:
    table = read_units(path)
    h = hashlib.sha256()
    for uid, units, durations in zip(table["id"], table["units"], table["durations"], strict=True):
        h.update(uid.encode())
        h.update(np.ascontiguousarray(units, dtype=np.int32).tobytes())
        h.update(np.ascontiguousarray(durations, dtype=np.int32).tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2_500_000)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = write_corpus(tmp / "frames.parquet", args.frames, args.vocab, args.seed)
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            stats = deduplicate(tmp / "frames.parquet", tmp / "dedup.parquet", tmp / "stats.json")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the digest reads the whole file
        result = {
            "frames": frames,
            "utterances": stats["utterances"],
            "dedup_units": stats["dedup_units"],
            "wall_s": min(walls),
            "cpu_s": min(cpus),
            "frames_per_s_wall": frames / min(walls),
            "frames_per_s_cpu": frames / min(cpus),
            "peak_rss_mb": peak,
            "output_sha256": digest(tmp / "dedup.parquet"),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
