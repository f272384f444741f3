"""The evaluation result files: long-format metrics JSON with experiment labels, and the LM scores tables they read.

Every entry point of eval/ writes one JSON file:

    {"format": "textless-slm/metrics-v1", "task": ..., "labels": {"experiment", "set", "encoder", "units", "layer",
     "k", "lm", "seed", "kmeans_seed"}, "inputs": {...}, "metrics": [{"metric", "value", "unit", "n",
     "conventions": {...}, "ci95": [low, high] | null, "items": {item id: score} | null}, ...], "details": {...},
     "provenance": {config, code_version, command, created}}

One record per number, each with the conventions needed to read it (set, normalisation, slicing, distance, ...),
so that `eval.report` can put any number in a table without guessing how it was computed. Accuracies also carry
their 95% bootstrap interval over items (eval.stats) and the per-item scores it was computed from (in [0, 1]),
which the report's paired tests compare item by item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_write_json, provenance
from eval.stats import bootstrap_ci, ci_convention

METRICS_FORMAT = "textless-slm/metrics-v1"
LABEL_KEYS = ("experiment", "set", "encoder", "encoder_kind", "units", "quantizer", "layer", "k", "lm", "seed",
              "kmeans_seed")
NORMALISATIONS = ("mean", "sum")


class MetricsFileError(ValueError):
    """A metrics JSON file that is missing or not in the format above; the message names the file."""


class LabelsError(ValueError):
    """A `--labels` JSON that is not an object of known label keys and plain values."""


class ScoresFileError(ValueError):
    """An LM scores table that is missing, malformed or incomplete; the message names the file."""


@dataclass(frozen=True)
class Metric:
    """One reported number: `value` in `unit` ("%" for accuracies and ABX error rates), over `n` items.

    `ci` is its 95% confidence interval in the same unit; `items` the per-item scores its value is the mean of
    (in [0, 1], so `value` = 100 * mean for a "%" accuracy), for paired tests between experiments.
    """

    metric: str
    value: float | None
    unit: str = ""
    n: int | None = None
    conventions: Mapping[str, Any] = field(default_factory=dict)
    ci: tuple[float, float] | None = None
    items: Mapping[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None or not math.isfinite(self.value) else float(self.value)
        doc = {"metric": self.metric, "value": value, "unit": self.unit, "n": self.n,
               "conventions": dict(self.conventions)}
        if self.ci is not None:
            doc["ci95"] = [float(self.ci[0]), float(self.ci[1])]
        if self.items is not None:
            doc["items"] = {str(k): float(v) for k, v in self.items.items()}
        return doc


def accuracy(name: str, scores: pd.Series, conventions: Mapping[str, Any], resampled: str,
             value: float | None = None) -> Metric:
    """An accuracy in % from per-item scores in [0, 1] (index = item id), with its bootstrap interval over items.

    `value` (in [0, 1]) is the accuracy as the scorer aggregates it, when that is not literally `scores.mean()`
    (sWUGGY in-vocab: a weighted mean of band means, equal up to rounding); default the mean.
    """
    if len(scores) == 0:
        return Metric(name, None, "%", 0, conventions)
    low, high = bootstrap_ci(scores.to_numpy())
    value = float(scores.mean()) if value is None else value
    return Metric(name, 100 * value, "%", len(scores), {**conventions, "ci": ci_convention(resampled)},
                  ci=(100 * low, 100 * high), items={str(k): float(v) for k, v in scores.items()})


def parse_labels(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Experiment labels from the `--labels` JSON object; unknown keys are an error naming the key."""
    if text is None:
        return {}
    if isinstance(text, str):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelsError(f"--labels is not valid JSON ({err}): {text!r}") from err
    else:
        labels = dict(text)
    if not isinstance(labels, dict):
        raise LabelsError(f"--labels must be a JSON object with keys among {list(LABEL_KEYS)}, got {text!r}")
    unknown = sorted(set(labels) - set(LABEL_KEYS))
    if unknown:
        raise LabelsError(f"--labels: unknown key(s) {unknown}; known keys: {list(LABEL_KEYS)}")
    for key, value in labels.items():
        if value is not None and not isinstance(value, str | int | float):
            raise LabelsError(f"--labels: value of {key!r} must be a string or a number, got {value!r}")
    return labels


def write_metrics(out: str | Path, *, task: str, metrics: list[Metric], labels: Mapping[str, Any],
                  inputs: Mapping[str, Any], config: Any, details: Mapping[str, Any] | None = None) -> dict:
    """Write the metrics JSON atomically and return what was written."""
    doc = {
        "format": METRICS_FORMAT,
        "task": task,
        "labels": dict(labels),
        "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()},
        "metrics": [m.to_json() for m in metrics],
        "details": _jsonable(details or {}),
        "provenance": provenance(config),
    }
    atomic_write_json(out, doc)
    return doc


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"{path}: metrics file not found")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MetricsFileError(f"{path}: not JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != METRICS_FORMAT:
        raise MetricsFileError(f"{path}: not a metrics file of format {METRICS_FORMAT!r} (written by eval.*)")
    for key in ("task", "labels", "metrics"):
        if key not in doc:
            raise MetricsFileError(f"{path}: metrics file without the {key!r} key")
    parse_labels(doc["labels"])
    return doc


def _jsonable(obj: Any) -> Any:
    """numpy / pandas scalars and NaN in result details -> plain JSON values (NaN -> null)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA:
        return None
    return obj


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A small result table as JSON records (for `details`)."""
    return _jsonable(frame.to_dict(orient="records"))


# ---------------------------------------------------------------------------------------------------------------
# LM scores: `id<TAB>score` lines written by `python -m lm.score` (log-likelihood, higher = more probable).


def read_scores(source: str | Path | pd.DataFrame | pd.Series) -> pd.Series:
    """Scores indexed by id (wav stem) as float64; a TSV path, a DataFrame (id, score) or a Series id -> score.

    The TSV has two tab-separated columns `id` and `score`, with or without that header line. Duplicate ids,
    non-numeric or non-finite scores are errors naming the file and the line.
    """
    if isinstance(source, pd.Series):
        series = source.copy()
        series.index = series.index.astype(str)
        name = "<Series>"
    elif isinstance(source, pd.DataFrame):
        missing = {"id", "score"} - set(source.columns)
        if missing:
            raise ScoresFileError(f"scores DataFrame needs columns 'id' and 'score'; missing {sorted(missing)}")
        series = pd.Series(source["score"].to_numpy(), index=source["id"].astype(str).to_numpy())
        name = "<DataFrame>"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ScoresFileError(f"{path}: scores file not found (expected `id<TAB>score` lines from lm.score)")
        ids, values = [], []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise ScoresFileError(f"{path}:{lineno}: expected `id<TAB>score`, got {line!r}")
            if lineno == 1 and parts == ["id", "score"]:
                continue
            try:
                values.append(float(parts[1]))
            except ValueError:
                raise ScoresFileError(f"{path}:{lineno}: score {parts[1]!r} is not a number") from None
            ids.append(parts[0])
        series = pd.Series(values, index=pd.Index(ids, dtype=object), dtype=np.float64)
    try:
        series = series.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ScoresFileError(f"{name}: scores are not numbers ({err})") from err
    dup = series.index[series.index.duplicated()]
    if len(dup):
        raise ScoresFileError(f"{name}: duplicate id(s) {sorted(set(dup))[:5]}")
    bad = series.index[~np.isfinite(series.to_numpy())]
    if len(bad):
        raise ScoresFileError(f"{name}: non-finite score for id(s) {list(bad[:5])}")
    series.index.name = "id"
    series.name = "score"
    return series


def scoring_conventions(scores: str | Path | Any, given: str | None) -> dict[str, str]:
    """How the scores were computed: 'normalisation' (mean or sum log-likelihood) plus what lm.score recorded.

    lm.score writes its conventions to the sidecar `SCORES.tsv.json` ("conventions": {"normalisation", "bos",
    "eos", ...}); a sidecar `SCORES.json` or a top-level "normalisation" key is read too. `given` (the
    --normalisation flag) must agree with the sidecar; without either, the normalisation cannot be stated and
    that is an error.
    """
    if given is not None and given not in NORMALISATIONS:
        raise ScoresFileError(f"normalisation must be one of {list(NORMALISATIONS)}, got {given!r}")
    recorded: dict[str, Any] = {}
    if isinstance(scores, str | Path):
        path = Path(scores)
        for sidecar in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
            if not sidecar.is_file() or sidecar == path:
                continue
            try:
                meta = json.loads(sidecar.read_text())
            except json.JSONDecodeError as err:
                raise ScoresFileError(f"{sidecar}: scores sidecar is not JSON ({err})") from err
            if isinstance(meta, dict):
                conv = meta.get("conventions") if isinstance(meta.get("conventions"), dict) else {}
                recorded = {**conv, **({"normalisation": meta["normalisation"]} if "normalisation" in meta else {})}
            if recorded.get("normalisation") not in (None, *NORMALISATIONS):
                raise ScoresFileError(f"{sidecar}: unknown normalisation {recorded['normalisation']!r}")
            if recorded:
                break
    norm = recorded.get("normalisation")
    if given is not None and norm is not None and given != norm:
        raise ScoresFileError(f"--normalisation {given} contradicts the scores sidecar of {scores}, which says {norm}")
    norm = given or norm
    if norm is None:
        raise ScoresFileError(f"the normalisation of {scores} is unknown: pass --normalisation mean|sum or keep the "
                              "sidecar JSON that lm.score writes next to its scores")
    return {"normalisation": str(norm),
            **{f"lm_{k}": str(v) for k, v in sorted(recorded.items()) if k != "normalisation"}}


def scores_warnings(scores: str | Path) -> list[str]:
    """The warnings lm.score recorded in the sidecar of a scores file (e.g. an LM trained for many epochs)."""
    sidecar = Path(scores).with_name(Path(scores).name + ".json")
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except json.JSONDecodeError:
        return []  # scoring_conventions names a broken sidecar
    found = meta.get("warnings") if isinstance(meta, dict) else None
    return [str(w) for w in found] if isinstance(found, list) else []


def pair_outcome(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The field's pair rule: 1 when the positive item is more probable, 0.5 on an exact tie, else 0."""
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    return (positive > negative) + 0.5 * (positive == negative)
