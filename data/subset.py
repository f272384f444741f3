"""Nested seeded subsets of a corpus by hours: the 600 h subset of a parent is inside its 6k h subset (same seed).

Usage: python -m data.subset PARENT.tsv OUT.tsv --config '{"of": "librilight60k", "hours": 600, "seed": 0}'

Every utterance of the parent gets a seeded random key computed from its id alone (sha256 of `seed:id`); the subset
is the longest prefix, in key order, of at most `hours` of audio. Two subsets with one seed are thus prefixes of one
order, so the smaller is contained in the larger, and neither changes when the parent manifest is reordered. The
subset keeps the parent's row order (and columns), so it shards and reads like any manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import loads
from data.audio import SAMPLE_RATE
from data.config import SubsetConfig
from data.manifest import ManifestError, read_manifest, write_manifest


def subset_order(ids: list[str], seed: int) -> np.ndarray:
    """Row indices in the seeded random order of the ids (ties, impossible in practice, by row)."""
    keys = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:8], "big") for uid in ids],
                    dtype=np.uint64)
    return np.argsort(keys, kind="stable")


def select_subset(table: pd.DataFrame, hours: float, seed: int, where: str = "manifest") -> pd.DataFrame:
    """The rows of the subset (parent order): the longest prefix of the seeded order with at most `hours`."""
    total = int(table["num_samples"].sum())
    budget = hours * 3600 * SAMPLE_RATE
    if budget > total:
        raise ManifestError(f"{where}: a subset of {hours:g} h asks for more than the parent's "
                            f"{total / SAMPLE_RATE / 3600:.3f} h")
    order = subset_order(table["id"].tolist(), seed)
    kept = np.cumsum(table["num_samples"].to_numpy()[order]) <= budget
    rows = np.sort(order[kept])
    if not len(rows):
        raise ManifestError(f"{where}: a subset of {hours:g} h holds no utterance (the first one drawn is longer)")
    return table.iloc[rows].reset_index(drop=True)


def make_subset(parent: str | Path, out: str | Path, config: SubsetConfig, log=sys.stderr) -> pd.DataFrame:
    """Write the subset manifest of PARENT described by `config` to OUT atomically."""
    table = read_manifest(parent)
    if not table["id"].is_unique:
        raise ManifestError(f"{parent}: utterance ids must be unique to draw a subset")
    subset = select_subset(table, config.hours, config.seed, str(parent))
    write_manifest(subset, out)
    print(f"subset {out}: {len(subset)} of {len(table)} utterances of {config.of}, "
          f"{subset['num_samples'].sum() / SAMPLE_RATE / 3600:.3f} h (asked {config.hours:g} h, seed {config.seed})",
          file=log)
    return subset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parent", type=Path, help="the parent corpus' manifest")
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", required=True, help='data.config.SubsetConfig JSON: {"of", "hours", "seed"}')
    args = parser.parse_args(argv)
    make_subset(args.parent, args.out, loads(SubsetConfig, args.config))


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
