"""sWUGGY (lexical) and sBLIMP (syntactic) accuracy from LM scores, aggregated exactly as the ZeroSpeech 2021 scorer.

Usage:
    python -m eval.slm21 lexical   --gold ROOT/lexical/dev/gold.csv   --scores SCORES.tsv --out METRICS.json \
        [--submission SUBDIR] [--config JSON] [--set dev|test]
    python -m eval.slm21 syntactic --gold ROOT/syntactic/dev/gold.csv --scores SCORES.tsv --out METRICS.json ...

Rules (zerospeech/benchmarks `tasks/lm/{lexical,syntactic}.py`, `submissions/sLM21.py`):
* a pair scores 1 when the positive item's score is higher, 0.5 on an exact tie, 0 otherwise;
* sWUGGY: words and non-words joined on (id, voice); mean over voices per id, then mean over ids ("all");
  frequency bands of the word's LibriSpeech count with left-closed bins [0,1) oov, [1,5) "1-5", [5,20) "6-20",
  [20,100) "21-100", [100,inf) ">100" (the official labels, bins as the code cuts them); "in-vocab" = the
  count-weighted mean of the non-oov bands (= the mean over in-vocabulary ids); the 95% bootstrap interval
  resamples ids (eval.stats), so a word, its non-word and all their voices stay together;
* sBLIMP: the k-th correct row of gold.csv paired with its k-th incorrect row; mean over voices per
  (type, subtype, id); "pairs" = mean over those (the leaderboard number, its interval resampling those pairs),
  "macro" = mean of the per-type means.
Differences from the official code, both cosmetic: it rounds per-id scores to 4 decimals in an intermediate CSV
(at most 5e-5 per id; we keep full precision), and an empty frequency band would make its in-vocab NaN (we skip
empty bands).

`--submission SUBDIR` also writes SUBDIR/<task>/<set>.txt, one `<wav-stem> <score>` line per gold file, which
`zrc benchmarks:run sLM21 SUBDIR -t lexical syntactic --sets dev` re-scores (zrc writes a default params.yaml
when it is missing; meta.yaml, the author and model card, comes from `zrc submission:init sLM21` or by hand).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import loads
from common.io import atomic_write_text
from eval.benchmarks import BenchmarkError, read_lexical_gold, read_syntactic_gold, split_of
from eval.config import ScoresJob, labels_of
from eval.results import (
    Metric,
    ScoresFileError,
    accuracy,
    pair_outcome,
    read_scores,
    records,
    scores_warnings,
    scoring_conventions,
    write_metrics,
)

FREQUENCY_BINS = (0, 1, 5, 20, 100, float("inf"))
FREQUENCY_BANDS = ("oov", "1-5", "6-20", "21-100", ">100")
TIE_RULE = "1 if score(positive) > score(negative), 0.5 on a tie, else 0"


@dataclass(frozen=True)
class LexicalResult:
    all: float  # accuracy in [0, 1]
    in_vocab: float
    n_ids: int
    n_pairs: int
    n_unpaired: int  # gold rows without a partner for their (id, voice)
    by_id: pd.DataFrame  # id, word, non_word, frequency, length, voices, score
    by_frequency: pd.DataFrame  # band, n, score, std
    by_length: pd.DataFrame  # length, n, score, std


@dataclass(frozen=True)
class SyntacticResult:
    pairs: float  # mean over (type, subtype, id): the leaderboard number
    macro: float  # mean over types of the per-type means
    n_ids: int
    n_pairs: int
    by_id: pd.DataFrame  # type, subtype, id, sentence, non_sentence, score
    by_type: pd.DataFrame  # type, n, score, std


def attach_scores(gold: pd.DataFrame, scores: pd.Series, source: str) -> pd.DataFrame:
    """gold rows with their `score`; every gold file must be scored (as the zrc submission validator demands)."""
    missing = gold.loc[~gold["filename"].isin(scores.index), "filename"]
    if len(missing):
        raise ScoresFileError(f"{source}: no score for {len(missing)} of {len(gold)} benchmark files, e.g. "
                              f"{list(missing[:3])}")
    return gold.assign(score=scores.reindex(gold["filename"]).to_numpy())


def score_lexical(gold: pd.DataFrame, scores: pd.Series, source: str = "scores") -> LexicalResult:
    data = attach_scores(gold, scores, source)
    nonword_rows = data[data["correct"] == 0]
    if nonword_rows["word"].isna().all():  # the official scorer names non-words by their phones then
        data = data.assign(word=data["phones"])
    words = data[data["correct"] == 1]
    nonwords = data[data["correct"] == 0]
    pairs = words.merge(nonwords, on=["id", "voice"], suffixes=("_w", "_nw"), how="inner")
    if pairs.empty:
        raise BenchmarkError(f"{source}: no (word, non-word) pair shares an (id, voice) in the gold file")
    paired_files = set(pairs["filename_w"]) | set(pairs["filename_nw"])
    pairs["outcome"] = pair_outcome(pairs["score_w"].to_numpy(), pairs["score_nw"].to_numpy())
    by_id = pairs.groupby("id", sort=True).agg(
        word=("word_w", "first"), non_word=("word_nw", "first"), frequency=("frequency_w", "first"),
        length=("length_w", "first"), voices=("voice", "nunique"), score=("outcome", "mean"),
    ).reset_index()
    bands = pd.cut(by_id["frequency"].astype("float64"), list(FREQUENCY_BINS), labels=list(FREQUENCY_BANDS),
                   right=False)
    by_frequency = by_id["score"].groupby(bands, observed=False).agg(n="count", score="mean", std="std")
    by_frequency = by_frequency.reset_index().rename(columns={"frequency": "band"})
    by_frequency["band"] = by_frequency["band"].astype(str)
    invocab = by_frequency[(by_frequency["band"] != "oov") & (by_frequency["n"] > 0)]
    in_vocab = float(np.average(invocab["score"], weights=invocab["n"])) if len(invocab) else float("nan")
    by_length = by_id["score"].groupby(by_id["length"]).agg(n="count", score="mean", std="std").reset_index()
    return LexicalResult(
        all=float(by_id["score"].mean()), in_vocab=in_vocab, n_ids=len(by_id), n_pairs=len(pairs),
        n_unpaired=len(data) - len(paired_files), by_id=by_id, by_frequency=by_frequency, by_length=by_length,
    )


def score_syntactic(gold: pd.DataFrame, scores: pd.Series, source: str = "scores",
                    gold_path: str = "gold.csv") -> SyntacticResult:
    data = attach_scores(gold, scores, source)
    pos = data[data["correct"] == 1].reset_index(drop=True)
    neg = data[data["correct"] == 0].reset_index(drop=True)
    if len(pos) != len(neg):
        raise BenchmarkError(f"{gold_path}: {len(pos)} correct vs {len(neg)} incorrect rows; the official scorer "
                             f"pairs "
                             "them by row order, so the counts must match")
    keys = ["id", "voice", "type", "subtype"]
    mismatch = (pos[keys].astype(str) != neg[keys].astype(str)).any(axis=1)
    if mismatch.any():
        k = int(np.flatnonzero(mismatch.to_numpy())[0])
        raise BenchmarkError(f"{gold_path}: the {k}-th correct row ({pos.loc[k, 'filename']}) and the {k}-th "
                             f"incorrect row ({neg.loc[k, 'filename']}) differ in {keys}: the file's row order does "
                             "not pair them as the official scorer assumes")
    pairs = pos[["type", "subtype", "id", "voice", "transcription"]].assign(
        non_sentence=neg["transcription"], outcome=pair_outcome(pos["score"].to_numpy(), neg["score"].to_numpy()))
    by_id = pairs.groupby(["type", "subtype", "id"], sort=True).agg(
        sentence=("transcription", "first"), non_sentence=("non_sentence", "first"), voices=("voice", "nunique"),
        score=("outcome", "mean"),
    ).reset_index()
    by_type = by_id["score"].groupby(by_id["type"]).agg(n="count", score="mean", std="std").reset_index()
    return SyntacticResult(pairs=float(by_id["score"].mean()), macro=float(by_type["score"].mean()),
                           n_ids=len(by_id), n_pairs=len(pairs), by_id=by_id, by_type=by_type)


def write_submission(subdir: str | Path, task: str, split: str, gold: pd.DataFrame, scores: pd.Series) -> Path:
    """SUBDIR/<task>/<split>.txt: `<wav-stem> <score>` for every gold file, in gold order, full precision."""
    out = Path(subdir) / task / f"{split}.txt"
    lines = [f"{name} {float(scores[name])!r}\n" for name in gold["filename"]]
    atomic_write_text(out, "".join(lines))
    return out


def run(task: str, gold_path: Path, scores_path: Path, out: Path, *, submission: Path | None,
        normalisation: str | None, labels: dict, split: str | None, check_wavs: bool = True) -> dict:
    scoring = scoring_conventions(scores_path, normalisation)
    norm = scoring["normalisation"]
    split = split_of(gold_path, split)
    scores = read_scores(scores_path)
    base = {**scoring, "set": split, "normalisation": f"{norm} log-likelihood", "pair_rule": TIE_RULE}
    inputs = {"gold": gold_path, "scores": scores_path}
    if task == "lexical":
        gold = read_lexical_gold(gold_path, check_wavs=check_wavs)
        res = score_lexical(gold, scores, str(scores_path))
        conv = {**base, "aggregation": "pairs joined on (id, voice); mean over voices per id, then over ids"}
        per_id = res.by_id.set_index(res.by_id["id"].astype(str))["score"]
        in_vocab_ids = per_id[(res.by_id["frequency"].astype("float64") >= FREQUENCY_BINS[1]).to_numpy()]
        metrics = [
            accuracy("swuggy_all", per_id, conv, "ids (a word, its non-word and their voices stay together)",
                     value=res.all),
            accuracy("swuggy_in_vocab", in_vocab_ids,
                     {**conv, "subset": "frequency-band weighted mean excluding oov (frequency > 0)"
                      + ("" if res.n_ids > res.by_frequency.query("band == 'oov'")["n"].sum()
                         else "; not computed: every word is out of vocabulary")},
                     "in-vocabulary ids", value=None if np.isnan(res.in_vocab) else res.in_vocab),
        ]
        for row in res.by_frequency.itertuples():
            metrics.append(Metric(f"swuggy_band_{row.band}", 100 * row.score if row.n else None, "%", int(row.n),
                                  {**conv, "subset": f"LibriSpeech frequency band {row.band}"}))
        details = {"by_frequency": records(res.by_frequency), "by_length": records(res.by_length),
                   "pairs": res.n_pairs, "unpaired_gold_rows": res.n_unpaired}
    elif task == "syntactic":
        gold = read_syntactic_gold(gold_path, check_wavs=check_wavs)
        res = score_syntactic(gold, scores, str(scores_path), str(gold_path))
        conv = {**base, "pairing": "k-th correct row with k-th incorrect row of gold.csv"}
        per_pair = res.by_id.set_index(res.by_id[["type", "subtype", "id"]].astype(str).agg("/".join, axis=1))["score"]
        metrics = [
            accuracy("sblimp", per_pair,
                     {**conv, "aggregation": "pair-level: mean over voices per (type, subtype, id), then over pairs"},
                     "(type, subtype, id) pairs, their voices together", value=res.pairs),
            Metric("sblimp_macro", 100 * res.macro, "%", len(res.by_type),
                   {**conv, "aggregation": "macro: mean over voices per (type, subtype, id), mean per type, then "
                                           "mean over types"}),
        ]
        for row in res.by_type.itertuples():
            metrics.append(Metric(f"sblimp_type_{row.type}", 100 * row.score, "%", int(row.n),
                                  {**conv, "subset": f"type {row.type}"}))
        details = {"by_type": records(res.by_type), "pairs": res.n_pairs}
    else:
        raise BenchmarkError(f"unknown sLM21 task {task!r}; expected lexical or syntactic")
    if submission is not None:
        details["submission_file"] = str(write_submission(submission, task, split, gold, scores))
    if scores_warnings(scores_path):  # the report lists them as notes
        details["warnings"] = scores_warnings(scores_path)
    return write_metrics(out, task=task, metrics=metrics, labels=labels, inputs=inputs,
                         config={"task": task, "set": split, "normalisation": norm}, details=details)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("lexical", "syntactic"))
    parser.add_argument("--gold", type=Path, required=True, help="lexical|syntactic/{dev,test}/gold.csv")
    parser.add_argument("--scores", type=Path, required=True, help="id<TAB>score lines from lm.score")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--submission", type=Path, help="also write SUBMISSION/<task>/<set>.txt for zrc")
    parser.add_argument("--set", dest="split", choices=("dev", "test"), help="default: gold.csv's folder name")
    parser.add_argument("--config", default="{}", help='eval.config.ScoresJob JSON: {"normalisation": "mean"|"sum" '
                        '(default: the scores sidecar\'s), "experiment": {"name", "lm", "units"} (the labels)}')
    args = parser.parse_args(argv)
    job = loads(ScoresJob, args.config)
    doc = run(args.task, args.gold, args.scores, args.out, submission=args.submission,
              normalisation=job.normalisation, labels=labels_of(job.experiment), split=args.split)
    for m in doc["metrics"][:2]:
        value = "not computed" if m["value"] is None else f"{m['value']:.2f} %"
        print(f"{m['metric']}: {value} over {m['n']}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
