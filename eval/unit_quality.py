"""Unit quality against frame-level phone labels: PNMI, phone / cluster purity, perplexity, active units, bitrate.

Usage:
    python -m eval.unit_quality --units UNITS.parquet --phones dev/phones_100hz.jsonl --out METRICS.json \
        [--config '{"unit_quality": {"label_rate": 100, "max_length_diff": 2}, "experiment": {"units": ...}}']
    python -m eval.unit_quality --units units-kmeans-spidr-l6-dev-clean-and-other.jsonl.gz \
        --phones phoneme-dev-clean-and-other.jsonl.gz --out METRICS.json \
        --config '{"unit_quality": {"vocab_size": 256}}'

Units: a units Parquet file (units.format), SpidR's published JSON lines ({"name", "units"}, gzip or not) or
textlesslib / slamkit text units (`name<TAB>u1 u2 ...`), read as they are (eval.benchmarks.units_source); the
phone labels likewise our JSON lines or SpidR's `phoneme-*.jsonl.gz` ({"name", "phones"}).

Protocol (fairseq `measure_teacher_quality.py`, SpidR `units_quality`; reproduces SpidR's published numbers):
each unit (50 Hz) is repeated label_rate / unit_rate = 2 times, the unit and 100 Hz label sequences are truncated
to the shorter (a difference above `max_length_diff` frames is an error), silence stays a label, no time shift.
From the phone x unit count matrix N, with p = N / sum(N):
    PNMI = I(phone; unit) / H(phone); phone purity = sum_u max_y p(y, u); cluster purity = sum_y max_u p(y, u);
    codebook perplexity = 2^H(unit) over the aligned frames; active units = units with at least one aligned frame;
    bitrate = log2(vocab_size) x (runs of equal consecutive units per second), over the whole unit sequences.
Logs are exact (0 log 0 = 0) where fairseq / SpidR add an epsilon; the two agree to about 1e-6.
A deduplicated units file is expanded back to frames with its durations first.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import loads
from eval.benchmarks import UnitsSource, iter_unit_sequences, read_phone_labels, units_source
from eval.config import UnitQualityConfig, UnitQualityJob, labels_of
from eval.results import Metric, write_metrics
from units.format import collapse_warning

DEFAULT_UNIT_RATE = 50.0  # Hz: every encoder here and SpidR's released units


def _entropy(p: np.ndarray) -> float:
    """Entropy in nats of a probability vector, 0 log 0 = 0."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def quality_from_counts(counts: np.ndarray) -> dict[str, float]:
    """PNMI, purities, entropies, perplexity and active units from a (phones, units) frame count matrix."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise UnitQualityError("empty count matrix: no aligned frame")
    p = counts / total
    p_phone, p_unit = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    # I >= 0; a table with one active unit can sum to -1e-17 in floating point
    mutual_info = max(0.0, float((p[nz] * np.log(p[nz] / np.outer(p_phone, p_unit)[nz])).sum()))
    h_phone = _entropy(p_phone)
    h_unit = _entropy(p_unit)
    return {
        "pnmi": mutual_info / h_phone if h_phone > 0 else float("nan"),
        "phone_purity": float(p.max(axis=0).sum()),
        "cluster_purity": float(p.max(axis=1).sum()),
        "mutual_information_nats": mutual_info,
        "phone_entropy_nats": h_phone,
        "codebook_perplexity": math.exp(h_unit),  # = 2^H in bits
        "active_units": int((counts.sum(axis=0) > 0).sum()),
    }


class UnitQualityError(ValueError):
    """Units and phone labels that cannot be counted together (rates, ids, lengths, vocabulary)."""


@dataclass
class CountAccumulator:
    """Streams utterances into the phone x unit count matrix; only that matrix stays in memory."""

    vocab_size: int
    repeat: int
    max_length_diff: int
    phones: dict[str, int] = dataclasses.field(default_factory=dict)
    table: np.ndarray | None = None  # (phones, vocab_size) frame counts
    frames: int = 0
    length_diff_total: int = 0
    length_diff_max: int = 0
    runs: int = 0  # deduplicated units over the whole sequences (for the bitrate)
    unit_frames: int = 0  # unit frames over the whole sequences

    def add(self, uid: str, units: np.ndarray, phones: list[str]) -> None:
        if len(units) and (units.min() < 0 or units.max() >= self.vocab_size):
            raise UnitQualityError(f"utterance {uid}: unit ids must lie in [0, {self.vocab_size}); found "
                             f"[{units.min()}, {units.max()}]")
        up = np.repeat(units, self.repeat)
        diff = abs(len(up) - len(phones))
        if diff > self.max_length_diff:
            raise UnitQualityError(f"utterance {uid}: {len(phones)} label frames vs {len(units)} units x "
                                   f"{self.repeat} = "
                                   f"{len(up)} frames, more than {self.max_length_diff} apart; are the rates right?")
        n = min(len(up), len(phones))
        index = self.phones
        rows = np.array([index[p] if p in index else index.setdefault(p, len(index)) for p in phones[:n]],
                        dtype=np.int64)
        if self.table is None or self.table.shape[0] < len(self.phones):
            grown = np.zeros((len(self.phones), self.vocab_size), dtype=np.int64)
            if self.table is not None:
                grown[: self.table.shape[0]] = self.table
            self.table = grown
        flat = np.bincount(rows * self.vocab_size + up[:n], minlength=self.table.size)
        self.table += flat.reshape(self.table.shape)
        self.frames += n
        self.length_diff_total += diff
        self.length_diff_max = max(self.length_diff_max, diff)
        self.runs += int(len(units) > 0) + int(np.count_nonzero(units[1:] != units[:-1]))
        self.unit_frames += len(units)

    def counts(self) -> tuple[np.ndarray, list[str]]:
        if self.table is None:
            raise UnitQualityError("no utterance was added")
        return self.table, list(self.phones)


def units_geometry(source: UnitsSource, cfg: UnitQualityConfig) -> tuple[float, int, dict[str, str]]:
    """Unit rate and vocabulary size: recorded by a Parquet units file, else configured, else the defaults (50 Hz;
    max unit id + 1, one pass over the file); with how each was decided."""
    for key, recorded in (("unit_rate", source.frame_rate), ("vocab_size", source.vocab_size)):
        given = getattr(cfg, key)
        if given is not None and recorded is not None and not math.isclose(given, recorded):
            raise UnitQualityError(f"unit_quality.{key}={given} contradicts {source.path}, which records {recorded}")
    if source.frame_rate is not None:
        rate, rate_from = source.frame_rate, "recorded in the units file"
    elif cfg.unit_rate is not None:
        rate, rate_from = cfg.unit_rate, "unit_quality.unit_rate"
    else:
        rate, rate_from = DEFAULT_UNIT_RATE, "default (the file does not record it)"
    if source.vocab_size is not None:
        vocab, vocab_from = source.vocab_size, "recorded in the units file"
    elif cfg.vocab_size is not None:
        vocab, vocab_from = cfg.vocab_size, "unit_quality.vocab_size"
    else:
        top = max((int(u.max()) for _, u in iter_unit_sequences(source) if len(u)), default=0)
        vocab, vocab_from = max(top + 1, 2), "largest unit id + 1 (the file does not record it)"
    return float(rate), int(vocab), {"unit_rate": rate_from, "vocab_size": vocab_from}


def _paths(value: Path | Sequence[Path]) -> list[Path]:
    return [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]


def evaluate(units_path: Path | Sequence[Path], phones_path: Path | Sequence[Path],
             cfg: UnitQualityConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The quality of units against phone labels; several (units, phones) pairs are pooled into one count matrix
    (the paper's PNMI over dev-clean and dev-other together), utterance ids unique across them."""
    units_paths, phones_paths = _paths(units_path), _paths(phones_path)
    if len(units_paths) != len(phones_paths):
        raise UnitQualityError(f"{len(units_paths)} units files but {len(phones_paths)} phone files: give one phone "
                               f"file "
                               "per units file, in the same order")
    sources = [units_source(path) for path in units_paths]
    geometries = [units_geometry(source, cfg) for source in sources]
    unit_rate, vocab, decided = geometries[0]
    for path, (rate, size, _) in zip(units_paths[1:], geometries[1:], strict=True):
        if not math.isclose(rate, unit_rate) or size != vocab:
            raise UnitQualityError(f"{path} ({rate:g} Hz, {size} units) cannot be pooled with {units_paths[0]} "
                                   f"({unit_rate:g} Hz, {vocab} units)")
    ratio = cfg.label_rate / unit_rate
    repeat = round(ratio)
    if repeat < 1 or not math.isclose(ratio, repeat):
        raise UnitQualityError(f"label rate {cfg.label_rate} Hz is not an integer multiple of the unit rate "
                               f"{unit_rate} Hz "
                               f"of {units_paths[0]}")
    acc = CountAccumulator(vocab, repeat, cfg.max_length_diff)
    seen: dict[str, Path] = {}
    unlabelled = 0
    for source, units_file, phones_file in zip(sources, units_paths, phones_paths, strict=True):
        labels = read_phone_labels(phones_file)
        here = set()
        for uid, units in iter_unit_sequences(source):
            if uid not in labels:
                unlabelled += 1
                continue
            if uid in seen:
                raise UnitQualityError(f"utterance {uid!r} is in both {seen[uid]} and {units_file}: pooled sets must "
                                       f"not "
                                       "share utterance ids")
            acc.add(uid, units, labels[uid])
            here.add(uid)
        missing = sorted(set(labels) - here)
        if missing:
            raise UnitQualityError(f"{units_file}: no units for {len(missing)} of the {len(labels)} utterances "
                                   f"labelled "
                                   f"in {phones_file}, e.g. {missing[:3]}")
        seen.update(dict.fromkeys(here, units_file))
    counts, phone_names = acc.counts()
    result = quality_from_counts(counts)
    seconds = acc.unit_frames / unit_rate
    result["bitrate"] = math.log2(vocab) * acc.runs / seconds if seconds > 0 else float("nan")
    details = {"utterances": len(seen), "utterances_without_labels": unlabelled, "aligned_frames": acc.frames,
               "units_format": sources[0].format, "label_rate_hz": cfg.label_rate, "unit_rate_hz": unit_rate,
               "vocab_size": vocab, "decided": decided, "phones": phone_names,
               "length_difference_total": acc.length_diff_total, "length_difference_max": acc.length_diff_max,
               "units_per_second_deduplicated": acc.runs / seconds if seconds > 0 else None}
    if len(units_paths) > 1:
        details["pooled"] = [{"units": str(u), "phones": str(f)} for u, f in zip(units_paths, phones_paths,
                                                                                    strict=True)]
    return result, details


def run(units_path: Path | Sequence[Path], phones_path: Path | Sequence[Path], out: Path, *,
        cfg: UnitQualityConfig, labels: dict) -> dict:
    units_paths, phones_paths = _paths(units_path), _paths(phones_path)
    result, details = evaluate(units_paths, phones_paths, cfg)
    repeat = round(cfg.label_rate / details["unit_rate_hz"])
    units_names = " + ".join(path.name for path in units_paths)
    conv = {"labels": " + ".join(path.name for path in phones_paths), "silence": "kept as a label",
            "phones": len(details["phones"]),
            "units": f"{units_names} ({details['units_format']}; rate {details['decided']['unit_rate']}, "
                     f"vocabulary {details['decided']['vocab_size']})",
            "alignment": f"units repeated x{repeat} to {cfg.label_rate:g} Hz labels, truncated to the shorter, "
                         "no shift"}
    if len(units_paths) > 1:
        conv["pooled"] = f"one count matrix over {len(units_paths)} sets"
    n = details["aligned_frames"]
    metrics = [
        Metric("pnmi", result["pnmi"], "", n, {**conv, "definition": "I(phone; unit) / H(phone) over frames"}),
        Metric("phone_purity", result["phone_purity"], "", n, {**conv, "definition": "sum_u max_y p(y, u)"}),
        Metric("cluster_purity", result["cluster_purity"], "", n, {**conv, "definition": "sum_y max_u p(y, u)"}),
        Metric("codebook_perplexity", result["codebook_perplexity"], "", n,
               {**conv, "definition": "2^H(unit) over the aligned frames"}),
        Metric("active_units", result["active_units"], "", n,
               {**conv, "definition": f"units used at least once, of {details['vocab_size']}"}),
        Metric("bitrate", result["bitrate"], "bit/s", details["utterances"],
               {"definition": f"log2({details['vocab_size']}) x deduplicated units per second"}),
    ]
    details = {**details, "mutual_information_nats": result["mutual_information_nats"],
               "phone_entropy_nats": result["phone_entropy_nats"]}
    collapsed = collapse_warning(int(result["active_units"]), int(details["vocab_size"]), units_names)
    if collapsed:  # the report lists details' warnings as notes
        details["warnings"] = [collapsed]
        print(f"warning: {collapsed}", file=sys.stderr)
    inputs = ({"units": units_paths[0], "phones": phones_paths[0]} if len(units_paths) == 1 else
              {**{f"units_{i}": u for i, u in enumerate(units_paths)},
               **{f"phones_{i}": f for i, f in enumerate(phones_paths)}})
    return write_metrics(out, task="unit_quality", metrics=metrics, labels=labels, inputs=inputs,
                         config=dataclasses.asdict(cfg), details=details)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=Path, nargs="+", required=True,
                        help="units Parquet (frame-level or deduplicated), JSON lines {name|id, units} (.jsonl[.gz]) "
                             "or text units 'name<TAB>u1 u2 ...'; several files are pooled (with as many --phones)")
    parser.add_argument("--phones", type=Path, nargs="+", required=True,
                        help="JSON lines {name|id, phones} at the label rate (.jsonl[.gz]), one per --units file")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--config", default="{}", help='eval.config.UnitQualityJob JSON: {"unit_quality": '
                        '{UnitQualityConfig fields}, "experiment": {"units": UnitsConfig}} (labels come from it)')
    args = parser.parse_args(argv)
    job = loads(UnitQualityJob, args.config)
    doc = run(args.units, args.phones, args.out, cfg=job.unit_quality, labels=labels_of(job.experiment))
    print(" ".join(f"{m['metric']}={m['value']:.4g}" for m in doc["metrics"]))


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
