"""Unit-LM data packing as its own CPU job: `python -m lm.pack --units U.parquet --out DATA_DIR --config JSON`.

It builds the memory-mapped token arrays of `lm.data` (train/valid split by utterance, `<bos> units <eos>` streams)
before training, so that at corpus scale no GPU of the training job waits on it (`lm.train --data DATA_DIR`).
The config is the LM's training config: only its `valid_fraction` and `seed` decide the packing, and
`lm.train` refuses packed data whose split settings differ from its own. Memory stays flat with corpus size:
units are read in record batches and written straight into the memory maps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common.config import loads
from lm.config import TrainConfig
from lm.data import prepare_token_arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", required=True, type=Path, help="deduplicated training units (Parquet)")
    parser.add_argument("--out", required=True, type=Path, help="folder of the packed arrays (written last)")
    parser.add_argument("--config", default="{}", help="JSON object: the LM training config (lm/config.py)")
    args = parser.parse_args(argv)
    cfg = loads(TrainConfig, args.config)
    start = time.perf_counter()
    _, stats = prepare_token_arrays(args.units, args.out, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    seconds = time.perf_counter() - start
    tokens = sum(split["tokens"] for split in stats.values())
    print(json.dumps({"out": str(args.out), "stats": stats, "seconds": round(seconds, 3),
                      "tokens_per_s": round(tokens / max(seconds, 1e-9))}), file=sys.stderr)


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
