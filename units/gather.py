"""Gather the shard files of one units run into the dataset's units file, streaming (no torch: a light CPU job).

Usage: python -m units.gather SHARD_0.parquet ... SHARD_N-1.parquet --out UNITS.parquet

The result has the same rows in the same order as one unsharded `units.extract units` run, whatever N, with the
shards' summaries added up and their provenance. Memory stays flat in corpus size: record batches are copied one
at a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from common.io import provenance
from units.format import UnitsFileError, UnitsWriter, read_units_meta

MAX_SKIPPED_RECORDED = 1000  # per result file; the log has them all
GATHER_BATCH_ROWS = 1024  # rows per record batch when files are streamed into one


def merge_units_files(parts: list[Path], out: Path, prov: dict[str, Any], vocab_size: int,
                      frame_rate: float) -> dict[str, Any]:
    """Stream units files into OUT record batch by record batch; their summaries are added up into
    provenance['summary'] (utterances, frames, seconds, skipped files)."""
    summaries = [read_units_meta(part)["provenance"]["summary"] for part in parts]
    skipped = [s for summary in summaries for s in summary["skipped"]]
    summary = {key: sum(s[key] for s in summaries) for key in ("utterances", "frames", "skipped_count")}
    summary["skipped"] = skipped[:MAX_SKIPPED_RECORDED]
    summary["seconds"] = summary["frames"] / frame_rate
    with UnitsWriter(out, vocab_size=vocab_size, frame_rate=frame_rate,
                     provenance={**prov, "summary": summary}) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=GATHER_BATCH_ROWS):
                writer.write_batch(batch)
    return summary


def gather_units(shards: list[str | Path], out: str | Path, log=sys.stderr) -> dict[str, Any]:
    """Stream the shard files of `units.extract.extract_units(shard=(i, n))`, i = 0..n-1, into one units file."""
    shards, out = [Path(s) for s in shards], Path(out)
    if not shards:
        raise UnitsFileError(f"{out}: no shard files to gather")
    metas = [read_units_meta(s) for s in shards]
    first = metas[0]["provenance"]
    for i, (path, meta) in enumerate(zip(shards, metas, strict=True)):
        info = meta["provenance"].get("shard", {"index": 0, "count": 1})
        if (info["index"], info["count"]) != (i, len(shards)):
            raise UnitsFileError(f"{path}: shard {info['index']} of {info['count']}, but it is given as shard {i} of "
                                 f"{len(shards)}; list every shard of one run, in order")
        if meta["provenance"]["config"] != first["config"]:
            raise UnitsFileError(f"{path}: extracted with another config than {shards[0]} "
                                 f"({meta['provenance']['config']} vs {first['config']}); rerun its shards")
    prov = {**provenance(first["config"]), "encoder_info": first["encoder_info"], "run": first["run"]}
    summary = merge_units_files(shards, out, prov, metas[0]["vocab_size"], metas[0]["frame_rate"])
    print(f"units: gathered {len(shards)} shard(s) into {out}: {summary['utterances']} utterances, "
          f"{summary['frames']} frames, {summary['skipped_count']} bad audio file(s) skipped", file=log)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, nargs="+", help="shard files 0..N-1 of `units --num-shards N`, in order")
    parser.add_argument("--out", type=Path, required=True, help="units file (.parquet)")
    args = parser.parse_args(argv)
    gather_units(args.shards, args.out)


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
