"""Word discrimination on continuous features: the same-different task, as mean average precision (MAP).

Usage:
    python -m eval.word_map --features FEATDIR --words WORDS --out METRICS.json [--frame-rate 50] [--config JSON]

The task of Carlin et al. (2011, "Rapid evaluation of speech representations for spoken term discovery"), the one
behind the SpidR paper's `map-continuous.csv`: every pair of word tokens gets a distance, the DTW-aligned frame
distance between their feature sequences; pairs of the same word are the relevant ones; ranking all pairs by
increasing distance, the score is the average precision of that ranking (x 100). No package of the field installs on
Python 3.12 (Kamper's `speech_dtw` / `samediff` are scripts, not packages), so this is a faithful reimplementation,
checked in tests/test_word_map.py against a brute-force DTW and a hand-computed precision.

- Tokens: WORDS has one token per line, `file onset offset word [speaker]` (whitespace-separated, times in seconds;
  lines starting with `#` are comments). A token's frames are those whose centre (i + 1/2) / rate lies inside
  [onset, offset] (the ABX slicing without the Libri-Light off-by-one); a token with fewer than `min_frames`
  frames is dropped and counted.
- Distance: `cosine` (1 - cos, Carlin et al. and samediff), `angular` (acos(cos) / pi, the ABX default) or
  `euclidean` between frames, aligned by DTW (steps (1, 0), (0, 1), (1, 1)); the path's summed cost divided by its
  length (torchdtw, the alignment fastabx uses for ABX).
- Pairs: `all` (every pair of tokens) or `different_speakers` (only pairs of two speakers: the harder variant).
- Average precision: over the ranking by distance, sum over distinct distances d of (recall(d) - recall(d-)) x
  precision(d) (tied distances enter the ranking together, so the order of ties cannot change the score); with no
  tie, the mean of the precision at the rank of each same-word pair. `word_map` is that AP over all pairs;
  `word_map_per_query` also averages, over every token with at least one other token of its word, the AP of the
  ranking of the other tokens by their distance to it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.config import field, loads
from eval.abx import feature_files, features_frame_rate, load_features
from eval.config import Experiment, labels_of
from eval.results import Metric, write_metrics

DISTANCES = ("cosine", "angular", "euclidean")


class WordMapError(ValueError):
    """A word alignment file or features folder that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class WordMapConfig:
    """The protocol (see the module docstring)."""

    distance: Literal["cosine", "angular", "euclidean"] = "cosine"
    pairs: Literal["all", "different_speakers"] = "all"
    min_frames: int = field(1, ge=1)
    block: int = field(64, ge=1)  # tokens per side of one batched DTW call (memory: block^2 x frames^2 floats)


@dataclass(frozen=True)
class WordMapJob:
    """`python -m eval.word_map --config`: the protocol and what is evaluated (its labels), as eval.config's jobs."""

    word_map: WordMapConfig = dc_field(default_factory=WordMapConfig)
    experiment: Experiment | None = None


@dataclass(frozen=True)
class Token:
    file: str
    onset: float
    offset: float
    word: str
    speaker: str | None


def read_words(path: Path) -> list[Token]:
    """The word tokens of an alignment file (`file onset offset word [speaker]` per line)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: word alignment file not found")
    tokens = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (4, 5):
            raise WordMapError(f"{path}:{lineno}: expected `file onset offset word [speaker]`, got {line!r}")
        try:
            onset, offset = float(parts[1]), float(parts[2])
        except ValueError:
            raise WordMapError(f"{path}:{lineno}: onset / offset {parts[1]!r} {parts[2]!r} are not numbers") from None
        if not (math.isfinite(onset) and math.isfinite(offset)) or offset <= onset or onset < 0:
            raise WordMapError(f"{path}:{lineno}: needs 0 <= onset < offset, got {onset} {offset}")
        tokens.append(Token(parts[0], onset, offset, parts[3], parts[4] if len(parts) == 5 else None))
    if not tokens:
        raise WordMapError(f"{path}: no word token")
    return tokens


def token_slice(onset: float, offset: float, rate: float) -> slice:
    """Frames whose centre (i + 1/2) / rate lies in [onset, offset]."""
    first = max(0, math.ceil(onset * rate - 0.5))
    last = math.floor(offset * rate - 0.5)
    return slice(first, last + 1)


def frame_distances(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    """(n1, n2, s1, s2) frame distances between two padded batches (n, s, d)."""
    n1, s1, d = x.shape
    n2, s2, _ = y.shape
    if distance == "euclidean":
        dist = torch.cdist(x.reshape(n1 * s1, d), y.reshape(n2 * s2, d), compute_mode="donot_use_mm_for_euclid_dist")
        return dist.view(n1, s1, n2, s2).transpose(1, 2)
    xn = torch.nn.functional.normalize(x, dim=-1)
    yn = torch.nn.functional.normalize(y, dim=-1)
    cos = torch.mm(xn.reshape(n1 * s1, d), yn.reshape(n2 * s2, d).T).view(n1, s1, n2, s2).transpose(1, 2)
    cos = cos.clamp(-1, 1)
    return 1 - cos if distance == "cosine" else cos.acos() / math.pi


def _padded(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.zeros(len(seqs), int(lengths.max()), seqs[0].shape[1], dtype=torch.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def pair_distances(seqs: Sequence[torch.Tensor], distance: str, block: int = 64) -> np.ndarray:
    """The (n, n) matrix of DTW distances between every two sequences (diagonal 0), in blocks of tokens."""
    from torchdtw import dtw_batch

    if distance not in DISTANCES:
        raise WordMapError(f"distance {distance!r}; expected one of {list(DISTANCES)}")
    n = len(seqs)
    out = np.zeros((n, n))
    for i in range(0, n, block):
        x, sx = _padded(seqs[i:i + block])
        for j in range(i, n, block):
            y, sy = _padded(seqs[j:j + block])
            cost = dtw_batch(frame_distances(x, y, distance).contiguous(), sx, sy, symmetric=False)
            out[i:i + len(sx), j:j + len(sy)] = cost.double().numpy()
    upper = np.triu(out, 1)
    return upper + upper.T  # the lower blocks were not computed: DTW cost is symmetric in its two sequences


def average_precision(distances: np.ndarray, relevant: np.ndarray) -> float:
    """AP of ranking by increasing distance, tied distances entering together; NaN without a relevant item."""
    distances = np.asarray(distances, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    total = int(relevant.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(distances, kind="stable")
    d, r = distances[order], relevant[order]
    hits, seen = np.cumsum(r), np.arange(1, len(r) + 1)
    last = np.r_[d[1:] != d[:-1], True]  # the last item of each group of equal distances
    precision = hits[last] / seen[last]
    recall = hits[last] / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class SameDifferent:
    ap: float
    map_per_query: float
    tokens: int
    pairs: int
    same_pairs: int
    queries: int


def same_different(matrix: np.ndarray, words: Sequence[str], speakers: Sequence[str | None] | None = None,
                   pairs: str = "all") -> SameDifferent:
    """The same-different scores of a distance matrix between tokens of `words`."""
    words = np.asarray(words, dtype=object)
    n = len(words)
    allowed = ~np.eye(n, dtype=bool)
    if pairs == "different_speakers":
        if speakers is None or any(s is None for s in speakers):
            raise WordMapError("pairs 'different_speakers' needs a speaker on every word token (fifth column)")
        spk = np.asarray(speakers, dtype=object)
        allowed &= spk[:, None] != spk[None, :]
    elif pairs != "all":
        raise WordMapError(f"pairs {pairs!r}; expected 'all' or 'different_speakers'")
    same = words[:, None] == words[None, :]
    iu = np.triu_indices(n, 1)
    keep = allowed[iu]
    ap = average_precision(matrix[iu][keep], same[iu][keep])
    per_query = []
    for q in range(n):
        others = allowed[q]
        if (same[q] & others).any():
            per_query.append(average_precision(matrix[q][others], same[q][others]))
    return SameDifferent(ap=ap, map_per_query=float(np.mean(per_query)) if per_query else float("nan"),
                         tokens=n, pairs=int(keep.sum()), same_pairs=int((same[iu] & allowed[iu]).sum()),
                         queries=len(per_query))


def load_tokens(tokens: list[Token], featdir: Path, rate: float, min_frames: int,
                words_path: Path) -> tuple[list[torch.Tensor], list[Token], int]:
    """Each token's frames; tokens shorter than `min_frames` frames are dropped (returned count)."""
    files = feature_files(featdir)
    missing = sorted({t.file for t in tokens} - set(files))
    if missing:
        raise WordMapError(f"{words_path}: {len(missing)} file(s) have no features in {featdir}, e.g. "
                           f"{missing[:3]}; extract the features of the same audio")
    cache: dict[str, torch.Tensor] = {}
    seqs, kept, dropped = [], [], 0
    for t in tokens:
        if t.file not in cache:
            cache[t.file] = load_features(files[t.file]).float()
        frames = cache[t.file][token_slice(t.onset, t.offset, rate)]
        if len(frames) < min_frames:
            dropped += 1
            continue
        seqs.append(frames)
        kept.append(t)
    return seqs, kept, dropped


def run(features: Path, words_path: Path, out: Path, *, frame_rate: float | None, job: WordMapJob) -> dict:
    cfg = job.word_map
    rate = features_frame_rate(features, frame_rate)
    seqs, tokens, dropped = load_tokens(read_words(words_path), features, rate, cfg.min_frames, words_path)
    if len(tokens) < 2:
        raise WordMapError(f"{words_path}: {len(tokens)} token(s) with at least {cfg.min_frames} frame(s) at "
                           f"{rate} Hz: the task needs pairs")
    matrix = pair_distances(seqs, cfg.distance, cfg.block)
    result = same_different(matrix, [t.word for t in tokens], [t.speaker for t in tokens], cfg.pairs)
    conventions = {"task": "same-different word discrimination (Carlin et al. 2011)",
                   "distance": f"{cfg.distance} between frames, DTW (torchdtw) cost / path length",
                   "pairs": cfg.pairs, "frame_rate_hz": rate, "slicing": "frame centre in [onset, offset]",
                   "min_frames": cfg.min_frames, "ties": "tied distances ranked together"}
    metrics = [Metric("word_map", 100 * result.ap, "%", result.pairs,
                      {**conventions, "average_precision": "over all token pairs"}),
               Metric("word_map_per_query", 100 * result.map_per_query, "%", result.queries,
                      {**conventions, "average_precision": "per query token, averaged over queries"})]
    labels = labels_of(job.experiment)
    details = {"tokens": result.tokens, "tokens_dropped": dropped, "pairs": result.pairs,
               "same_pairs": result.same_pairs, "words": len({t.word for t in tokens})}
    return write_metrics(out, task="word_map", metrics=metrics, labels=labels,
                         inputs={"features": features, "words": words_path}, config=job, details=details)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="folder of <utt-id>.pt features (T, D)")
    parser.add_argument("--words", type=Path, required=True, help="word alignments: file onset offset word [speaker]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frame-rate", type=float, default=None,
                        help="Hz (default: recorded by units.extract, or 50)")
    parser.add_argument("--config", default="{}",
                        help='WordMapJob JSON: {"word_map": {"distance": "cosine", ...}, "experiment": {...}}')
    args = parser.parse_args(argv)
    job = loads(WordMapJob, args.config)
    doc = run(args.features, args.words, args.out, frame_rate=args.frame_rate, job=job)
    values = {m["metric"]: m["value"] for m in doc["metrics"]}
    print(f"word MAP {values['word_map']:.2f} % over {doc['details']['pairs']} pairs of {doc['details']['tokens']} "
          f"tokens (per query: {values['word_map_per_query']:.2f} %) -> {args.out}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
