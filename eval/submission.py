"""One ZeroSpeech 2021 sLM21 submission folder per experiment, merged from the per-task parts that eval.slm21 writes.

Usage:
    python -m eval.submission --parts DIR [DIR ...] --out SUBMISSION --config JSON

Each part is a folder holding `lexical/<set>.txt`, `syntactic/<set>.txt` (set: dev or test; `<wav-stem> <score>`
lines, eval.slm21.write_submission) and/or `semantic/<set>/{synthetic,librispeech}/*.npy|txt`. The result is the
layout that zrc (PyPI `zerospeech-benchmarks` 0.9.4) loads and validates (`SLM21Submission.load`):

    SUBMISSION/meta.yaml                         model card and publication (zrc's MetaFile)
    SUBMISSION/params.yaml                       what zrc's SLM21BenchmarkParameters reads (quiet, semantic knobs)
    SUBMISSION/lexical/{dev,test}.txt            copied byte for byte from the parts
    SUBMISSION/syntactic/{dev,test}.txt
    SUBMISSION/semantic/{dev,test}/...           only when a part carries it

Two parts carrying the same task and set are an error naming both folders. The folder is built beside SUBMISSION and
renamed into place last, so a reader never sees half of it. `scripts/zrc_validate.sh` checks it with zrc itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from common.config import field, loads
from common.io import atomic_write, code_version
from eval.config import Experiment

TASKS = ("lexical", "syntactic", "semantic")
SETS = ("dev", "test")
SEMANTIC_KINDS = ("synthetic", "librispeech")
# zrc's SemanticParams.metric takes any scipy.spatial.distance.cdist metric; these are the ones its docs list.
SemanticMetric = Literal["braycurtis", "canberra", "chebyshev", "cityblock", "correlation", "cosine", "euclidean",
                         "jensenshannon", "mahalanobis", "minkowski", "seuclidean", "sqeuclidean"]


class SubmissionError(ValueError):
    """A part that cannot go into a submission: a duplicate task+set, an unknown entry, a malformed score line."""


@dataclass(frozen=True)
class SubmissionMeta:
    """meta.yaml's publication block and model card extras (the workflow's optional `submission` section).

    zrc's validator requires non-empty authors, institution and publication year, and refuses any text that starts
    like its template (`<...>`); `username` (the zerospeech.com account) and `author_label` are set by `zrc submit`.
    """

    authors: str = "textless-slm contributors"
    institution: str = "textless-slm"
    team: str | None = None
    paper_title: str | None = None
    paper_url: str | None = None
    publication_year: int | None = field(None, ge=1900)  # None: the year the folder is written
    bib_reference: str | None = None
    doi: str | None = None
    code_url: str | None = None
    open_source: bool = True
    gpu_budget: str | None = None  # zrc recommends it (GPU hours of training), e.g. "2 h on one H100"
    username: str | None = None
    author_label: str = ""

    def __post_init__(self) -> None:
        for name in ("authors", "institution"):
            if not getattr(self, name).strip():
                raise SubmissionError(f"'{name}' must not be empty: zrc's validator requires it")


@dataclass(frozen=True)
class SemanticParams:
    """params.yaml's semantic block (zrc's SemanticParams): how sSIMI compares pooled embeddings."""

    metric: SemanticMetric = "euclidean"
    pooling: Literal["min", "max", "mean", "sum", "last", "lastlast", "off"] = "mean"
    n_jobs: int = field(1, ge=1)
    synthetic: bool = True
    librispeech: bool = True


@dataclass(frozen=True)
class SubmissionJob:
    """`python -m eval.submission --config`: the experiment (model id and description), its training data, meta."""

    train_set: str  # meta.yaml model_info.train_set (required by zrc)
    experiment: Experiment | None = None  # model_id = its name; the description comes from its labels
    model_id: str | None = None  # overrides the experiment's name
    description: str | None = None  # overrides the description built from the labels
    meta: SubmissionMeta = dataclasses.field(default_factory=SubmissionMeta)
    semantic: SemanticParams = dataclasses.field(default_factory=SemanticParams)
    quiet: bool = False

    def __post_init__(self) -> None:
        if not self.train_set.strip():
            raise SubmissionError("'train_set' must not be empty: zrc's validator requires it")
        if self.experiment is None and self.description is None:
            raise SubmissionError("give 'experiment' (the description is built from its labels) or 'description'")


def describe(experiment: Experiment) -> str:
    """A one-line system description from the experiment's labels (what the report's row says)."""
    labels = experiment.labels()
    units = f"{labels['encoder']} ({labels['encoder_kind']}) layer {labels['layer']}"
    quantizer = labels["quantizer"] + (f" K={labels['k']}" if labels.get("k") else "")
    seeds = "".join(f", {key} {labels[key]}" for key in ("seed", "kmeans_seed") if labels.get(key) is not None)
    return f"unit LM {labels['lm']} on {quantizer} units of {units}{seeds}"


def meta_document(job: SubmissionJob, version: str, year: int) -> dict[str, Any]:
    """meta.yaml as zrc's MetaFile reads it (the keys of `zrc submission:init`'s template)."""
    meta = job.meta
    model_id = job.model_id or (job.experiment.name if job.experiment is not None else None)
    description = job.description if job.description is not None else describe(job.experiment)
    return {
        "username": meta.username,
        "submission_id": None,
        "benchmark_name": "sLM21",
        "model_info": {
            "model_id": model_id,
            # the code version is the provenance every result of this project records
            "system_description": f"{description}; textless-slm {version}",
            "train_set": job.train_set,
            "gpu_budget": meta.gpu_budget,
        },
        "publication": {
            "author_label": meta.author_label,
            "authors": meta.authors,
            "paper_title": meta.paper_title,
            "paper_url": meta.paper_url,
            "publication_year": meta.publication_year or year,
            "bib_reference": meta.bib_reference,
            "DOI": meta.doi,
            "institution": meta.institution,
            "team": meta.team,
        },
        "open_source": meta.open_source,
        "code_url": meta.code_url,
    }


def params_document(job: SubmissionJob, semantic_ext: str | None) -> dict[str, Any]:
    """params.yaml with the keys zrc's `SLM21BenchmarkParameters.export` writes; zrc reads the semantic files'
    extension from `syntactic.score_files_type` (default .npy), so it is written only for text embeddings."""
    doc: dict[str, Any] = {"quiet": job.quiet, "semantic": dataclasses.asdict(job.semantic)}
    if semantic_ext == ".txt":
        doc["syntactic"] = {"score_files_type": ".txt"}
    return doc


def check_scores_file(path: Path) -> None:
    """Every line `<name> <float>`: what zrc's validator parses (a space-separated frame, a float column)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if len(fields) != 2:
                raise SubmissionError(f"{path}:{number}: expected '<wav-stem> <score>', got {line.rstrip()!r}")
            try:
                float(fields[1])
            except ValueError:
                raise SubmissionError(f"{path}:{number}: score {fields[1]!r} is not a number") from None


def semantic_extension(folder: Path) -> str | None:
    """The one extension (.npy or .txt) of a semantic/<set> folder's embedding files, or None when it has none."""
    found = {p.suffix for kind in SEMANTIC_KINDS for p in (folder / kind).glob("*") if p.is_file()}
    if not found <= {".npy", ".txt"} or len(found) > 1:
        raise SubmissionError(f"{folder}: embeddings must all be .npy or all .txt (zrc reads one type), found "
                              f"{sorted(found)}")
    return found.pop() if found else None


def part_entries(part: Path) -> dict[tuple[str, str], Path]:
    """(task, set) -> file or folder of one part; dot files (Snakemake's `.snakemake_timestamp`) are skipped."""
    if not part.is_dir():
        raise SubmissionError(f"{part}: part is not a folder")
    entries: dict[tuple[str, str], Path] = {}
    for task_dir in sorted(p for p in part.iterdir() if not p.name.startswith(".")):
        if task_dir.name not in TASKS or not task_dir.is_dir():
            raise SubmissionError(f"{task_dir}: not a task folder (expected {', '.join(TASKS)})")
        for entry in sorted(p for p in task_dir.iterdir() if not p.name.startswith(".")):
            if task_dir.name == "semantic":
                ok = entry.is_dir() and entry.name in SETS
                key = (task_dir.name, entry.name)
            else:
                ok = entry.is_file() and entry.suffix == ".txt" and entry.stem in SETS
                key = (task_dir.name, entry.stem)
            if not ok:
                expected = "dev/ or test/" if task_dir.name == "semantic" else "dev.txt or test.txt"
                raise SubmissionError(f"{entry}: unexpected entry (expected {expected})")
            entries[key] = entry
    if not entries:
        raise SubmissionError(f"{part}: part holds no task file")
    return entries


def collect(parts: list[Path]) -> dict[tuple[str, str], Path]:
    """Every (task, set) of the parts; the same task and set in two parts is an error naming both folders."""
    merged: dict[tuple[str, str], Path] = {}
    owner: dict[tuple[str, str], Path] = {}
    for part in parts:
        for key, path in part_entries(part).items():
            if key in merged:
                raise SubmissionError(f"{key[0]}/{key[1]} is in two parts: {owner[key]} and {part}")
            merged[key], owner[key] = path, part
    return merged


def merge(parts: list[Path], out: Path, job: SubmissionJob) -> dict[str, Any]:
    """Write the submission folder `out`; returns what it holds."""
    entries = collect(parts)
    semantic_ext = None
    for (task, _), path in entries.items():
        if task == "semantic":
            ext = semantic_extension(path)
            if semantic_ext is not None and ext is not None and ext != semantic_ext:
                raise SubmissionError(f"semantic embeddings mix {semantic_ext} and {ext} files across sets")
            semantic_ext = semantic_ext or ext
        else:
            check_scores_file(path)
    version = code_version()
    year = datetime.now(UTC).year
    with atomic_write(out) as tmp:
        tmp.mkdir()
        for (task, split), path in sorted(entries.items()):
            if task == "semantic":
                shutil.copytree(path, tmp / task / split)
            else:
                (tmp / task).mkdir(exist_ok=True)
                shutil.copyfile(path, tmp / task / f"{split}.txt")
        (tmp / "params.yaml").write_text(yaml.safe_dump(params_document(job, semantic_ext), sort_keys=False))
        (tmp / "meta.yaml").write_text(yaml.safe_dump(meta_document(job, version, year), sort_keys=False))
        if out.exists():  # a by-hand rerun: os.replace cannot put a folder over a non-empty one
            stale = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, stale)
            shutil.rmtree(stale)
    return {"out": str(out), "tasks": [f"{task}/{split}" for task, split in sorted(entries)],
            "code_version": version}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=Path, nargs="+", required=True, help="per-task folders (eval.slm21 "
                        "--submission)")
    parser.add_argument("--out", type=Path, required=True, help="the submission folder to write")
    parser.add_argument("--config", required=True, help="eval.submission.SubmissionJob JSON: train_set, experiment "
                        "or model_id + description, meta (authors, institution, ...), semantic (metric, pooling)")
    args = parser.parse_args(argv)
    job = loads(SubmissionJob, args.config)
    summary = merge(args.parts, args.out, job)
    print(f"{summary['out']}: {', '.join(summary['tasks'])}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
