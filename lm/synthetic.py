"""Synthetic deduplicated unit corpora (a sparse Markov chain) for LM tests, benchmarks and budget planning.

Each unit has a few likely successors, never itself (the units are deduplicated), so an LM can learn the chain
and its loss falls well below log(K). Written with units.format, exactly like the units stage's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from units.format import UnitsWriter


def write_markov_units(path: str | Path, *, num_utterances: int, vocab_size: int = 256, min_len: int = 20,
                       max_len: int = 200, successors: int = 4, seed: int = 0, id_prefix: str = "utt") -> Path:
    """Write `num_utterances` deduplicated utterances of length in [min_len, max_len] to a units Parquet file."""
    rng = np.random.default_rng(seed)
    # successor table: unit -> `successors` distinct other units, drawn with skewed fixed probabilities
    table = np.stack([rng.choice(np.delete(np.arange(vocab_size), u), size=successors, replace=False)
                      for u in range(vocab_size)])
    probs = rng.dirichlet(np.ones(successors))
    with UnitsWriter(path, vocab_size=vocab_size, frame_rate=50.0, deduplicated=True,
                     provenance={"synthetic": "lm.synthetic.write_markov_units", "seed": seed}) as writer:
        for i in range(num_utterances):
            n = int(rng.integers(min_len, max_len + 1))
            picks = rng.choice(successors, size=n, p=probs)
            units = np.empty(n, dtype=np.int32)
            units[0] = rng.integers(vocab_size)
            for j in range(1, n):
                units[j] = table[units[j - 1], picks[j]]
            writer.write(f"{id_prefix}{i:06d}", units, rng.integers(1, 5, size=n))
    return Path(path)
