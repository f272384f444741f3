"""Spoken StoryCloze (sSC) and Topic StoryCloze (tSC) accuracy from whole-story LM scores.

Usage:
    python -m eval.storycloze --dir ROOT/storycloze/sSC --scores SCORES.tsv --task sSC --out METRICS.json \
        [--config JSON]

Each wav holds a whole story (four context sentences and an ending); `<2i>_<story>_correct.wav` pairs with
`<2i+1>_<story>_incorrect.wav`. A pair scores 1 when the correct story's log-likelihood is higher, 0.5 on a tie,
0 otherwise; the accuracy is the mean over pairs. The published numbers (slamkit, SpidR) score the whole story
with the mean per-token log-likelihood; the normalisation used is stated in every output. The 95% bootstrap
interval resamples story pairs (eval.stats).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from common.config import loads
from eval.benchmarks import BenchmarkError, read_storycloze
from eval.config import ScoresJob, labels_of
from eval.results import (
    ScoresFileError,
    pair_outcome,
    read_scores,
    scores_warnings,
    scoring_conventions,
    write_metrics,
)
from eval.results import accuracy as accuracy_metric

TASKS = ("sSC", "tSC")


def score_storycloze(pairs: pd.DataFrame, scores: pd.Series, source: str = "scores") -> tuple[float, pd.DataFrame]:
    """Accuracy in [0, 1] and the per-pair outcomes."""
    needed = pd.concat([pairs["correct"], pairs["incorrect"]])
    missing = needed[~needed.isin(scores.index)]
    if len(missing):
        raise ScoresFileError(f"{source}: no score for {len(missing)} of {len(needed)} story files, e.g. "
                              f"{list(missing[:3])}")
    result = pairs.assign(score_correct=scores.reindex(pairs["correct"]).to_numpy(),
                          score_incorrect=scores.reindex(pairs["incorrect"]).to_numpy())
    result["outcome"] = pair_outcome(result["score_correct"].to_numpy(), result["score_incorrect"].to_numpy())
    return float(result["outcome"].mean()), result


def task_of(folder: Path, given: str | None) -> str:
    if given is not None:
        return given
    if folder.name in TASKS:
        return folder.name
    raise BenchmarkError(f"{folder}: cannot tell sSC from tSC by the folder name; pass --task")


def run(folder: Path, scores_path: Path, out: Path, *, task: str | None, normalisation: str | None,
        labels: dict) -> dict:
    task = task_of(folder, task)
    scoring = scoring_conventions(scores_path, normalisation)
    norm = scoring["normalisation"]
    pairs = read_storycloze(folder)
    accuracy, result = score_storycloze(pairs, read_scores(scores_path), str(scores_path))
    conv = {**scoring, "set": "StoryCloze 2016 spring test (the only split)",
            "normalisation": f"{norm} log-likelihood of the whole story",
            "pair_rule": "1 if score(correct) > score(incorrect), 0.5 on a tie, else 0",
            "aggregation": "mean over story pairs"}
    metric = accuracy_metric(task.lower(), result.set_index(result["correct"].astype(str))["outcome"], conv,
                             "story pairs", value=accuracy)
    details = {"ties": int((result["outcome"] == 0.5).sum()),
               "mean_margin": float((result["score_correct"] - result["score_incorrect"]).mean())}
    if scores_warnings(scores_path):  # the report lists them as notes
        details["warnings"] = scores_warnings(scores_path)
    return write_metrics(out, task=task, metrics=[metric], labels=labels,
                         inputs={"dir": folder, "scores": scores_path},
                         config={"task": task, "normalisation": norm}, details=details)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="folder of <2i>_<story>_(in)correct.wav")
    parser.add_argument("--scores", type=Path, required=True, help="id<TAB>score lines from lm.score")
    parser.add_argument("--task", choices=TASKS, help="default: the folder name")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--config", default="{}", help='eval.config.ScoresJob JSON: {"normalisation": "mean"|"sum" '
                        '(default: the scores sidecar\'s), "experiment": {"name", "lm", "units"} (the labels)}')
    args = parser.parse_args(argv)
    job = loads(ScoresJob, args.config)
    doc = run(args.dir, args.scores, args.out, task=args.task, normalisation=job.normalisation,
              labels=labels_of(job.experiment))
    m = doc["metrics"][0]
    print(f"{m['metric']}: {m['value']:.2f} % over {m['n']} pairs")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
