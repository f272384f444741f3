"""Run inside .venv-zrc: the official ZeroSpeech toolkit validates an sLM21 submission folder offline and, with
--score, scores it; prints one JSON object (see scripts/zrc_validate.sh, which calls it).

    zrc_official.py SUBMISSION SLM21_ROOT [--sets dev test] [--score] [--ours METRICS.json ...] [--username NAME]

zrc (PyPI zerospeech-benchmarks 0.9.4) reads its benchmark data from APP_DIR (default ~/zr-data, created on import)
and on import asks download.zerospeech.com for a newer index unless APP_DIR/repo.json is more than 7 days old. Here
APP_DIR is a temporary folder whose repo.json names an sLM21-dataset and is dated 2000, and whose dataset index lists
SLM21_ROOT's wavs and gold files, so nothing is downloaded and the wavs checked against are the benchmark's. The
submission is checked in a temporary copy, since zrc writes params.yaml and scores/ into the folder it loads.

What is checked is what `zrc submit` checks before an upload (SubmissionUploader._check_submission):
`MetaFile.is_valid()` on meta.yaml, after the username that zrc fills from the logged-in account at upload (here
--username, when meta.yaml has none), and `SLM21Submission.valid` (every set's file lists exactly the benchmark's
wavs, two columns, float scores), on the tasks present (lexical, syntactic; semantic when SUBMISSION has it) and
--sets (default dev and test, as zrc loads a submission). With --score, zrc's LexicalTask and SyntacticTask score
it and the JSON gives per set sWUGGY all, in-vocab and sBLIMP as zrc's leaderboard aggregates them
(SLM21ScoreDir.lexical_scores / syntactic_scores), in %, next to ours read from --ours (eval.slm21 metrics files).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # common.cli: standard library only

from common.cli import run_main

TASKS = ("lexical", "syntactic", "semantic")
SEMANTIC_KINDS = ("synthetic", "librispeech")
OLD = 946684800  # 2000-01-01: zrc looks for a newer index online only when its repo.json is younger than 7 days


class ZrcCheckError(Exception):
    """A submission or benchmark folder that cannot be checked (named in the message)."""


def wav_list(folder: Path) -> dict[str, Any]:
    files = sorted(str(p.resolve()) for p in folder.glob("*.wav"))
    if not files:
        raise ZrcCheckError(f"{folder}: no .wav file")
    return {"item_type": "filelist_item", "file_type": "wav", "relative_path": False, "files_list": files}


def file_item(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise ZrcCheckError(f"{path}: missing")
    return {"item_type": "file_item", "file_type": kind, "relative_path": False, "file": str(path.resolve())}


def make_app_dir(app: Path, root: Path, tasks: list[str], sets: list[str]) -> None:
    """APP_DIR with a repo.json naming sLM21-dataset and that dataset's index.json over SLM21_ROOT's files."""
    subsets: dict[str, Any] = {}
    for task in tasks:
        for split in sets:
            folder = root / task / split
            if not folder.is_dir():
                raise ZrcCheckError(f"{folder}: the benchmark has no {task} {split} set (check fewer with --sets)")
            if task == "semantic":
                items = {f"{kind}_wav_list": wav_list(folder / kind) for kind in SEMANTIC_KINDS}
                items["pairs"] = file_item(folder / "pairs.csv", "csv")
            else:
                items = {"wav_list": wav_list(folder), "gold": file_item(folder / "gold.csv", "csv")}
            subsets[f"{task}_{split}"] = {"items": items}
    dataset = app / "datasets" / "sLM21-dataset"
    dataset.mkdir(parents=True)
    (dataset / "index.json").write_text(json.dumps({"subsets": subsets}))
    repo = {"last_modified": "2000-01-01T00:00:00", "checkpoints": [], "samples": [],
            "datasets": [{"name": "sLM21-dataset", "type": "internal", "zip_url": "https://localhost/none.zip",
                          "md5sum": "0", "total_size": 0}]}
    (app / "repo.json").write_text(json.dumps(repo))
    os.utime(app / "repo.json", (OLD, OLD))


def percent(value: float) -> float | None:
    """A zrc accuracy in %, None for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else 100 * float(value)


def zrc_scores(score_dir: Any, sets: list[str]) -> dict[str, dict[str, float | None]]:
    """Per set, the aggregates of zrc's SLM21ScoreDir.lexical_scores / syntactic_scores (which need both sets)."""
    import numpy as np

    out = {}
    for split in sets:
        by_frequency = getattr(score_dir, f"lexical_{split}_by_frequency")
        in_vocab = by_frequency[by_frequency["frequency"] != "oov"]
        try:
            with np.errstate(invalid="ignore"):  # an empty band: a NaN score with weight 0 makes zrc's in-vocab NaN
                in_vocab_value = np.average(in_vocab["score"].to_numpy(), weights=in_vocab["n"].to_numpy())
        except ZeroDivisionError:  # no in-vocabulary word at all: zrc's own leaderboard code stops here
            in_vocab_value = float("nan")
        out[split] = {
            "swuggy_all": percent(getattr(score_dir, f"lexical_{split}_by_pair")["score"].mean()),
            "swuggy_in_vocab": percent(in_vocab_value),
            "sblimp": percent(getattr(score_dir, f"syntactic_{split}_by_pair")["score"].mean()),
        }
    return out


def read_ours(paths: list[Path]) -> dict[str, dict[str, float | None]]:
    """sWUGGY all / in-vocab and sBLIMP by set from eval.slm21 metrics files (JSON; values already in %)."""
    ours: dict[str, dict[str, float | None]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        values = {m["metric"]: m["value"] for m in doc["metrics"]}
        split = doc["provenance"]["config"]["set"]
        keep = ("swuggy_all", "swuggy_in_vocab") if doc["task"] == "lexical" else ("sblimp",)
        ours.setdefault(split, {}).update({key: values[key] for key in keep})
    return ours


def check(submission: Path, root: Path, sets: list[str], score: bool, username: str,
          ours_files: list[Path]) -> dict[str, Any]:
    if not submission.is_dir():
        raise ZrcCheckError(f"{submission}: not a folder")
    tasks = [t for t in TASKS if (submission / t).is_dir()]
    if not tasks:
        raise ZrcCheckError(f"{submission}: no lexical/, syntactic/ or semantic/ folder")
    with tempfile.TemporaryDirectory(prefix="zrc-") as tmp:
        make_app_dir(Path(tmp) / "app", root, tasks, sets)
        os.environ["APP_DIR"] = str(Path(tmp) / "app")
        copy = Path(tmp) / "submission"
        shutil.copytree(submission, copy)
        # zrc prints progress and warnings with rich on stdout: keep stdout for the JSON alone
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "abx17 extension not installed" and the like, on import
            from importlib.metadata import version

            from pydantic import ValidationError as PydanticError
            from zerospeech.benchmarks.sLM21 import SLM21Benchmark
            from zerospeech.submissions import MetaFile
            from zerospeech.submissions.sLM21 import SLM21ScoreDir, SLM21Submission

            responses = []
            filled = {}
            if not (copy / "meta.yaml").is_file():
                raise ZrcCheckError(f"{submission}/meta.yaml: missing")
            try:
                meta = MetaFile.from_file(copy / "meta.yaml", enforce=True)
            except PydanticError as err:  # a missing or mistyped key: zrc cannot even read the file
                raise ZrcCheckError(f"{submission}/meta.yaml: zrc cannot read it: {err}") from None
            if meta.username is None:  # zrc submit sets it from the logged-in account before checking
                meta.username = filled["username"] = username
            meta.is_valid()
            responses += ~meta.validation_context
            sub = SLM21Submission.load(copy, tasks=tuple(tasks), sets=tuple(sets))
            sub.valid  # noqa: B018 (the property runs zrc's validators)
            responses += ~sub.validation_output
            result: dict[str, Any] = {
                "submission": str(submission), "benchmark": str(root), "tasks": tasks, "sets": sets,
                "valid": not any(r.error() for r in responses),
                "errors": [str(r) for r in responses if r.error()],
                "warnings": [str(r) for r in responses if r.warning()],
                "filled_as_at_upload": filled,
                "packages": {p: version(p) for p in ("zerospeech-benchmarks", "pandas", "numpy", "pydantic")},
            }
            if score and result["valid"]:
                scored = [t for t in tasks if t != "semantic"]
                sub = SLM21Submission.load(copy, tasks=tuple(scored), sets=tuple(sets))
                sub.params.quiet = True
                SLM21Benchmark(quiet=True).run(sub)
                score_dir = SLM21ScoreDir(location=sub.score_dir, submission_dir=copy, params=sub.params)
                result["zrc"] = zrc_scores(score_dir, sets)
    if ours_files:
        result["ours"] = read_ours(ours_files)
        if "zrc" in result:
            result["difference_zrc_minus_ours"] = {
                split: {key: None if value is None or result["ours"][split].get(key) is None
                        else value - result["ours"][split][key] for key, value in values.items()}
                for split, values in result["zrc"].items() if split in result["ours"]}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submission", type=Path, help="a merged sLM21 submission folder (eval.submission)")
    parser.add_argument("benchmark", type=Path, help="SLM21_ROOT: {lexical,syntactic}/{dev,test}/ wavs + gold.csv")
    parser.add_argument("--sets", nargs="+", choices=("dev", "test"), default=["dev", "test"])
    parser.add_argument("--score", action="store_true", help="also score with zrc (sWUGGY, sBLIMP per set)")
    parser.add_argument("--ours", type=Path, nargs="*", default=[], help="our lexical/syntactic metrics JSONs")
    parser.add_argument("--username", default="offline-check", help="meta.yaml's username when it has none "
                        "(zrc submit fills it from the logged-in zerospeech.com account)")
    args = parser.parse_args(argv)
    result = check(args.submission, args.benchmark, args.sets, args.score, args.username, args.ours)
    print(json.dumps(result, indent=2))
    if not result["valid"]:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
