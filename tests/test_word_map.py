"""eval.word_map: the same-different word discrimination task, checked against values computed independently here
(a brute-force DTW over every alignment path, and average precision as the mean precision at each relevant rank)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.word_map import (
    WordMapError,
    average_precision,
    main,
    pair_distances,
    read_words,
    same_different,
    token_slice,
)


def brute_dtw(d: np.ndarray) -> float:
    """Every monotone path from (0, 0) to (n-1, m-1) with steps (1,0), (0,1), (1,1): the cheapest one's summed cost
    over its length (the cheapest is unique in these tests)."""
    n, m = d.shape
    paths = []

    def walk(i: int, j: int, cost: float, length: int) -> None:
        if (i, j) == (n - 1, m - 1):
            paths.append((cost, length))
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < n and j + dj < m:
                walk(i + di, j + dj, cost + d[i + di, j + dj], length + 1)

    walk(0, 0, d[0, 0], 1)
    best = min(c for c, _ in paths)
    lengths = {length for c, length in paths if math.isclose(c, best, rel_tol=1e-12)}
    assert len(lengths) == 1, "tie between paths of different lengths: the test data must avoid it"
    return best / lengths.pop()


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    return 1 - xn @ yn.T


def ap_by_ranks(distances: list[float], relevant: list[bool]) -> float:
    """Mean over the relevant items of the precision at their rank (no ties)."""
    order = sorted(range(len(distances)), key=lambda i: distances[i])
    precisions, hits = [], 0
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def test_average_precision_by_hand() -> None:
    # ranking: same, different, same, different -> precisions 1/1 and 2/3 at the two same-word pairs
    assert average_precision([0.1, 0.2, 0.3, 0.4], [True, False, True, False]) == pytest.approx(5 / 6)
    assert average_precision([0.3, 0.1, 0.4, 0.5], [True, True, False, False]) == pytest.approx(1.0)
    # two pairs at one distance enter together: precision 1/2 at full recall, whichever is listed first
    assert average_precision([0.2, 0.2], [True, False]) == pytest.approx(0.5)
    assert average_precision([0.2, 0.2], [False, True]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0.2, 0.3], [False, False]))


def test_dtw_distances_match_a_brute_force_over_all_paths() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 3)) for n in (1, 2, 3, 4, 5, 3)]
    got = pair_distances([torch.from_numpy(s).float() for s in seqs], "cosine", block=4)  # two blocks
    for i, j in itertools.combinations(range(len(seqs)), 2):
        want = brute_dtw(cosine(seqs[i], seqs[j]))
        assert got[i, j] == pytest.approx(want, abs=1e-5) and got[j, i] == got[i, j], (i, j)
    euclid = pair_distances([torch.from_numpy(s).float() for s in seqs[:3]], "euclidean")
    d = np.linalg.norm(seqs[1][:, None] - seqs[2][None], axis=-1)
    assert euclid[1, 2] == pytest.approx(brute_dtw(d), abs=1e-5)


def test_worked_example_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two utterances at 10 Hz holding 6 word tokens of 3 words; the AP computed here from brute-force distances."""
    rng = np.random.default_rng(1)
    prototypes = {w: rng.normal(size=(4, 5)) for w in ("cat", "dog", "owl")}
    feats = tmp_path / "feats"
    feats.mkdir()
    words = [("u1", "cat", 4, "a"), ("u1", "dog", 3, "a"), ("u1", "owl", 4, "a"),
             ("u2", "cat", 3, "b"), ("u2", "dog", 4, "b"), ("u2", "owl", 2, "b")]
    utterances: dict[str, list[np.ndarray]] = {"u1": [], "u2": []}
    lines, tokens, t = [], [], {"u1": 0, "u2": 0}
    for utt, word, n, spk in words:
        frames = prototypes[word][:n] + 0.8 * rng.normal(size=(n, 5))
        start = t[utt]
        utterances[utt].append(frames)
        t[utt] += n
        # frames start..start+n-1 have centres (i + 0.5) / 10 s: the token spans [start / 10, (start + n) / 10]
        lines.append(f"{utt} {start / 10:.2f} {(start + n) / 10:.2f} {word} {spk}")
        tokens.append((word, spk, frames))
    for utt, parts in utterances.items():
        torch.save(torch.from_numpy(np.concatenate(parts)).float(), feats / f"{utt}.pt")
    words_file = tmp_path / "words.txt"
    words_file.write_text("#file onset offset word speaker\n" + "\n".join(lines) + "\n")
    assert [token_slice(w.onset, w.offset, 10) for w in read_words(words_file)][:2] == [slice(0, 4), slice(4, 7)]

    pairs = list(itertools.combinations(range(len(tokens)), 2))
    dist = {p: brute_dtw(cosine(tokens[p[0]][2], tokens[p[1]][2])) for p in pairs}
    want_all = ap_by_ranks([dist[p] for p in pairs], [tokens[i][0] == tokens[j][0] for i, j in pairs])
    cross = [p for p in pairs if tokens[p[0]][1] != tokens[p[1]][1]]
    want_cross = ap_by_ranks([dist[p] for p in cross], [tokens[i][0] == tokens[j][0] for i, j in cross])
    queries = []
    for q in range(len(tokens)):
        others = [o for o in range(len(tokens)) if o != q]
        queries.append(ap_by_ranks([dist[tuple(sorted((q, o)))] for o in others],
                                   [tokens[o][0] == tokens[q][0] for o in others]))

    out = tmp_path / "map.json"
    config = {"word_map": {"distance": "cosine"},
              "experiment": {"units": {"encoder": {"kind": "mfcc"}, "layer": 0, "encoder_name": "mfcc"},
                             "eval_set": "dev"}}
    main(["--features", str(feats), "--words", str(words_file), "--out", str(out), "--frame-rate", "10",
          "--config", json.dumps(config)])
    assert "word MAP" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    values = {m["metric"]: m["value"] for m in doc["metrics"]}
    assert values["word_map"] == pytest.approx(100 * want_all, abs=1e-6)
    assert values["word_map_per_query"] == pytest.approx(100 * np.mean(queries), abs=1e-6)
    assert doc["details"]["pairs"] == 15 and doc["details"]["same_pairs"] == 3
    assert doc["labels"]["quantizer"] == "continuous" and doc["labels"]["set"] == "dev"

    matrix = np.zeros((6, 6))
    for (i, j), v in dist.items():
        matrix[i, j] = matrix[j, i] = v
    result = same_different(matrix, [w for w, _, _ in tokens], [s for _, s, _ in tokens], "different_speakers")
    assert result.ap == pytest.approx(want_cross) and result.pairs == 9


def test_errors_name_the_file_and_line(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("u1 0.0 0.5 cat\nu1 0.5 0.4 dog\n")
    with pytest.raises(WordMapError, match=r"words.txt:2: needs 0 <= onset < offset"):
        read_words(words)
    words.write_text("u1 0.0 cat\n")
    with pytest.raises(WordMapError, match=r"words.txt:1: expected `file onset offset word \[speaker\]`"):
        read_words(words)
    feats = tmp_path / "feats"
    feats.mkdir()
    torch.save(torch.ones(5, 2), feats / "u1.pt")
    words.write_text("u1 0.0 0.05 cat\nu9 0.0 0.05 cat\n")
    with pytest.raises(WordMapError, match=r"1 file\(s\) have no features in .*\['u9'\]"):
        main(["--features", str(feats), "--words", str(words), "--out", str(tmp_path / "m.json")])
    with pytest.raises(WordMapError, match="needs a speaker on every word token"):
        same_different(np.zeros((2, 2)), ["a", "a"], [None, None], "different_speakers")
