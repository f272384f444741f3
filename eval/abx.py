"""Triphone and phoneme ABX error rates with fastabx, on continuous features or on discrete units.

Usage:
    python -m eval.abx --item dev/triphone.item --features FEATDIR --out METRICS.json [--frame-rate 50]
    python -m eval.abx --item dev/phoneme.item --units UNITS.parquet --out METRICS.json [--config JSON]

FEATDIR holds one `<utt-id>.pt` tensor (T, D) per utterance. --units takes a units Parquet file (units.format; a
deduplicated one is expanded back to frames with its durations), SpidR's published JSON lines ({"name", "units"},
.jsonl.gz) or textlesslib / slamkit text units (`name<TAB>u1 u2 ...`), read as they are; the last two record no
rate: --frame-rate, default 50 Hz. The conditions follow ZeroSpeech 2021 as
`fastabx.zerospeech_abx` defines them: triphone items give within-context ABX, phoneme items within- and
any-context ABX, each within and across speaker, averaged over contexts, then speakers, then ordered phone
pairs. The DTW, distances, cells and aggregation are fastabx's; this module only picks the conditions, checks
the inputs and states the conventions.

Conventions (recorded with every number):
* slicing: "fastabx" (default; frame i at (i + 1/2) / f s belongs to a token when onset <= t_i <= offset, as
  ABXpy and the SpidR paper) or "librilight" (Libri-Light / ZeroSpeech 2021 code, which drops every token's last
  frame; FASTABX_WITH_LIBRILIGHT_BUG=1). HuBERT L11 triphone within dev-clean: 3.38 % vs 3.06 %.
* input: continuous features, or codebook-head probabilities (units.extract features --codebook-probs, which
  FEATDIR/_CONFIG.json records; labelled quantizer "codebook_probs"), as the SpidR paper's third ABX.
* distance: angular on continuous features and on codebook probabilities (the fastabx / ZeroSpeech default; the
  SpidR repository does not show another); on units the 0/1 "identical" distance on unit ids, as the SpidR
  paper's discrete ABX (angular on one-hot vectors is the same distance times 1/2, hence the same ABX).
* subsampling: ZeroSpeech's 10 tokens per A/B/X and 5 X speakers across, seed 0 (set both to null for none).
* tokens that get no frame at this frame rate, or run past the end of their utterance's frames, are dropped and
  counted (fastabx would raise; Libri-Light drops them silently).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from fastabx import Dataset, EmptyTaskError, Score, Subsampler, Task

from common.artefacts import load_torch
from common.config import loads
from eval.benchmarks import ItemFile, UnitsSource, item_kind, iter_unit_sequences, read_item_file, units_source
from eval.config import AbxConfig, AbxJob, labels_of
from eval.results import Metric, write_metrics

SLICINGS = {
    "fastabx": "fastabx (frame i at (i+1/2)/f belongs to a token iff onset <= t_i <= offset, last frame kept)",
    "librilight": "Libri-Light / ZeroSpeech 2021 compatible (same start, exclusive end: last frame dropped)",
}
LIBRILIGHT_ENV = "FASTABX_WITH_LIBRILIGHT_BUG"
MEMORY_HINT = ("keep fastabx's tokens on the CPU (eval.abx.device: cpu) or subsample the cells more (a smaller "
               "eval.abx.max_size_group / max_x_across; a protocol change, said in the report)")
AGGREGATION = {
    "within": "mean over (prev, next) contexts, then speakers, then ordered (A, B) phone pairs",
    "any": "mean over speakers, then ordered (A, B) phone pairs",
}


class AbxError(ValueError):
    """An ABX evaluation that cannot be run as asked (frame rates, ids, items outside their utterances ...)."""


@dataclass(frozen=True)
class Condition:
    name: str
    context: str  # "within" | "any"
    speaker: str  # "within" | "across"
    by: tuple[str, ...]
    across: tuple[str, ...]
    levels: tuple  # fastabx collapse levels


def conditions_for(kind: str, speakers: tuple[str, ...]) -> list[Condition]:
    """The ZeroSpeech conditions of an item kind (never any-context on triphones: the context leaks in)."""
    contexts = ("within",) if kind == "triphone" else ("within", "any")
    out = []
    for context in contexts:
        for speaker in speakers:
            by = (["prev-phone", "next-phone"] if context == "within" else []) + (["speaker"] if speaker == "within"
                                                                                  else [])
            levels = ([("next-phone", "prev-phone")] if context == "within" else []) + ["speaker"]
            name = f"abx_{kind}_{speaker}_speaker" if kind == "triphone" else \
                f"abx_{kind}_{context}_context_{speaker}_speaker"
            out.append(Condition(name, context, speaker, tuple(by), ("speaker",) if speaker == "across" else (),
                                 tuple(levels)))
    return out


def fastabx_frequency(rate: float) -> int | str:
    """fastabx wants an int or a decimal string (a float would be rounded by binary floating point)."""
    if rate <= 0 or not math.isfinite(rate):
        raise AbxError(f"frame rate must be a positive number, got {rate}")
    return int(rate) if float(rate).is_integer() else repr(float(rate))


def token_frames(onset: Decimal, offset: Decimal, rate: Decimal, librilight: bool) -> tuple[int, int]:
    """[start, end) frame indices of a token under the slicing convention (the rule fastabx applies)."""
    half = Decimal("0.5")
    start = int((onset * rate - half).to_integral_value(ROUND_CEILING))
    end = int((offset * rate - half).to_integral_value(ROUND_FLOOR)) + (0 if librilight else 1)
    return start, end


def select_items(items: ItemFile, lengths: dict[str, int], rate: float, librilight: bool,
                 max_dropped: float = 1.0) -> tuple[list[str], dict[str, int]]:
    """Item rows that get at least one frame inside their utterance; counts of the dropped ones by reason.

    More than `max_dropped` of the items past the end of their utterance is an error naming the files: ABX over
    the remnant would be reported as if over the whole set.
    """
    missing = sorted({f for f in items.files if f not in lengths})
    if missing:
        raise FileNotFoundError(f"{items.path}: {len(missing)} utterance(s) of the item file have no features/units, "
                                f"e.g. {missing[:3]}")
    dec_rate = Decimal(str(fastabx_frequency(rate)))
    kept, dropped = [], {"empty": 0, "past_end": 0}
    short: dict[str, int] = {}  # utterance -> frames its items need
    for line, f, onset, offset in zip(items.lines, items.files, items.onsets, items.offsets, strict=True):
        start, end = token_frames(onset, offset, dec_rate, librilight)
        if end <= start:
            dropped["empty"] += 1
        elif start < 0 or end > lengths[f]:
            dropped["past_end"] += 1
            short[f] = max(short.get(f, 0), end)
        else:
            kept.append(line)
    if dropped["past_end"] > max_dropped * len(items.lines):
        shown = ", ".join(f"{f} ({lengths[f]} frames, items up to frame {n})" for f, n in sorted(short.items())[:5])
        raise AbxError(f"{items.path}: {dropped['past_end']} of {len(items.lines)} items fall past the end of their "
                       f"utterance at {rate:g} Hz (allowed: {max_dropped:.0%}, eval.abx.max_dropped), in "
                       f"{len(short)} file(s): {shown}; the units or features are cut short or at another frame "
                       "rate: delete them and rerun their extraction")
    if not kept:
        raise AbxError(f"{items.path}: no item has a frame at {rate} Hz inside its utterance; is the frame rate "
                       "right?")
    return kept, dropped


@contextmanager
def slicing_env(slicing: str) -> Iterator[None]:
    """fastabx reads its slicing switch from the environment when it builds a Dataset."""
    old = os.environ.get(LIBRILIGHT_ENV)
    os.environ[LIBRILIGHT_ENV] = "1" if slicing == "librilight" else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(LIBRILIGHT_ENV, None)
        else:
            os.environ[LIBRILIGHT_ENV] = old


# what a features folder holds -> the report's Quantizer label and the `input` convention
REPRESENTATIONS = {"features": ("continuous", "continuous features"),
                   "codebook_probs": ("codebook_probs", "codebook-head probabilities (SpidR / DinoSR)")}
FEATURES_REMEDY = "delete the features folder and rerun the rule that extracts it (extract_features)"


def load_features(path: str | Path) -> torch.Tensor:
    feats = load_torch(path, what="features file", remedy=FEATURES_REMEDY)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
        raise AbxError(f"{path}: expected a (frames, dim) tensor, got "
                       f"{getattr(feats, 'shape', type(feats).__name__)}")
    return feats.float()


def feature_files(featdir: Path) -> dict[str, Path]:
    """Utterance id (path below FEATDIR without .pt, as fastabx matches #file) -> feature file."""
    if not featdir.is_dir():
        raise FileNotFoundError(f"{featdir}: features folder not found (expected <utt-id>.pt tensors (T, D))")
    files = {p.relative_to(featdir).as_posix().removesuffix(".pt"): p for p in featdir.rglob("*.pt")}
    if not files:
        raise FileNotFoundError(f"{featdir}: no .pt feature file")
    return files


def features_frame_rate(featdir: Path, given: float | None) -> float:
    """The rate of a features folder: --frame-rate, or the `frame_rate` units.extract records in _SUCCESS.json,
    or 50 Hz (HuBERT / wav2vec 2.0 / SpidR) when neither says."""
    marker = featdir / "_SUCCESS.json"
    recorded = None
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("frame_rate")
        except (json.JSONDecodeError, AttributeError) as err:
            raise AbxError(f"{marker}: not a JSON object ({err})") from err
    if given is not None and recorded is not None and not math.isclose(given, float(recorded)):
        raise AbxError(f"--frame-rate {given} contradicts {marker}, which records {recorded} Hz")
    return float(given if given is not None else recorded if recorded is not None else 50.0)


def features_representation(featdir: Path) -> str:
    """"features" (hidden states) or "codebook_probs" (codebook-head probabilities), as units.extract records it in
    FEATDIR/_CONFIG.json; a folder without that file holds features."""
    marker = featdir / "_CONFIG.json"
    if not marker.is_file():
        return "features"
    try:
        representation = json.loads(marker.read_text()).get("representation", "features")
    except (json.JSONDecodeError, AttributeError) as err:
        raise AbxError(f"{marker}: not a JSON object ({err})") from err
    if representation not in REPRESENTATIONS:
        raise AbxError(f"{marker}: representation {representation!r}; expected one of {sorted(REPRESENTATIONS)}")
    return representation


def feature_lengths(files: dict[str, Path], needed: set[str]) -> dict[str, int]:
    """Frame counts without reading the tensors (memory-mapped load)."""
    lengths = {}
    for uid in needed & set(files):
        t = load_torch(files[uid], what="features file", remedy=FEATURES_REMEDY, mmap=True)
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise AbxError(f"{files[uid]}: expected a (frames, dim) tensor, got "
                           f"{getattr(t, 'shape', type(t).__name__)}")
        lengths[uid] = int(t.shape[0])
    return lengths


def frame_units(units_path: Path) -> tuple[dict[str, np.ndarray], UnitsSource]:
    """Frame-level units per utterance from any units file eval.benchmarks reads (a deduplicated Parquet file is
    expanded with its durations), and what the file records about itself."""
    source = units_source(units_path)
    return dict(iter_unit_sequences(source)), source


def build_dataset(item: Path, *, features: Path | None, units: dict[str, np.ndarray] | None, rate: float,
                  cfg: AbxConfig, workdir: Path) -> Dataset:
    """A fastabx Dataset from a (filtered) item file, under the configured slicing."""
    freq = fastabx_frequency(rate)
    with slicing_env(cfg.slicing):
        if features is not None:
            return Dataset.from_item(item, features, freq, feature_maker=load_features, device=cfg.device,
                                     progress=False)
        assert units is not None
        needed = {line.split()[0] for line in item.read_text().splitlines()[1:]}
        jsonl = workdir / "units.jsonl"
        # fastabx matches `audio` by its stem: a dummy extension keeps ids containing dots intact.
        with jsonl.open("w") as f:
            for uid in sorted(needed):
                f.write(json.dumps({"audio": f"{uid}.units", "units": units[uid].tolist()}) + "\n")
        return Dataset.from_item_and_units(item, jsonl, freq, device=cfg.device, progress=False)


def run(item_path: Path, out: Path, *, features: Path | None, units_path: Path | None, frame_rate: float | None,
        cfg: AbxConfig, labels: dict) -> dict:
    if (features is None) == (units_path is None):
        raise AbxError("give exactly one of --features FEATDIR and --units UNITS.parquet")
    items = read_item_file(item_path)
    kind = item_kind(item_path, cfg.item_kind)
    needed = set(items.files)
    units = None
    if features is not None:
        rate = features_frame_rate(features, frame_rate)
        lengths = feature_lengths(feature_files(features), needed)
        distance = cfg.distance or "angular"
        quantizer, source = REPRESENTATIONS[features_representation(features)]
    else:
        units, units_file = frame_units(units_path)
        recorded = units_file.frame_rate
        rate = float(frame_rate if frame_rate is not None else recorded if recorded is not None else 50.0)
        if recorded is not None and not math.isclose(rate, recorded):
            raise AbxError(f"--frame-rate {frame_rate} contradicts {units_path}, whose units are at "
                           f"{recorded} Hz")
        if any("/" in uid for uid in units):
            nested = next(uid for uid in units if "/" in uid)
            raise AbxError(f"{units_path}: utterance ids with '/' (e.g. {nested!r}) cannot be matched to the item "
                           "file's #file column (file stems); build the ABX manifest with file stems as ids "
                           "(python -m data.manifest AUDIO_DIR OUT.tsv --config '{\"ids\": \"stem\"}') and rerun")
        lengths = {uid: len(u) for uid, u in units.items()}
        distance = cfg.distance or "identical"
        given = "--frame-rate" if frame_rate is not None else "default"
        source = "discrete units" if recorded is not None else \
            f"discrete units ({units_file.format} file, {given} rate)"
    kept, dropped = select_items(items, lengths, rate, cfg.slicing == "librilight", cfg.max_dropped)
    subsampling = (f"max_size_group={cfg.max_size_group}, max_x_across={cfg.max_x_across}, seed={cfg.seed}"
                   if cfg.max_size_group is not None or cfg.max_x_across is not None else "none")
    common = {"input": source, "items": f"{kind} ({item_path.name})", "slicing": SLICINGS[cfg.slicing],
              "distance": distance, "alignment": "DTW, cost normalised by the path length",
              "subsampling": subsampling, "frame_rate_hz": rate, "tie": "0.5",
              "library": f"fastabx {version('fastabx')}"}
    if sum(dropped.values()):  # said in the report, as a footnote of the ABX columns
        common["items_dropped"] = (f"{sum(dropped.values())} of {len(items)} ({dropped['past_end']} past the end "
                                   f"of their utterance, {dropped['empty']} without a frame)")
    metrics, details = [], {"items_total": len(items), "items_used": len(kept), "items_dropped": dropped,
                            "conditions": {}}
    if dropped["past_end"]:  # the report lists details' warnings as notes
        details["warnings"] = [f"{item_path}: {dropped['past_end']} of {len(items)} items fall past the end of their "
                               f"utterance in {units_path or features} and were left out of ABX"]
        print(f"warning: {details['warnings'][0]}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="abx-") as tmp:
        filtered = Path(tmp) / f"{kind}.item"
        filtered.write_text(items.header + "\n" + "\n".join(kept) + "\n")
        dataset = build_dataset(filtered, features=features, units=units, rate=rate, cfg=cfg, workdir=Path(tmp))
        for cond in conditions_for(kind, cfg.speakers):
            start = time.perf_counter()
            subsampler = Subsampler(cfg.max_size_group, cfg.max_x_across if cond.speaker == "across" else None,
                                    cfg.seed)
            conv = {**common, "context": cond.context, "speaker": cond.speaker,
                    "aggregation": AGGREGATION[cond.context]}
            try:
                task = Task(dataset, on="#phone", by=list(cond.by) or None, across=list(cond.across) or None,
                            subsampler=subsampler)
            except EmptyTaskError:  # e.g. a single speaker has no across-speaker cell: say so, do not invent
                details["conditions"][cond.name] = {"cells": 0}
                metrics.append(Metric(cond.name, None, "%", len(kept),
                                      {**conv, "not_computed": "no ABX cell under this condition"}))
                continue
            error = Score(task, distance, progress=False).collapse(levels=list(cond.levels))
            details["conditions"][cond.name] = {"cells": len(task), "seconds": round(time.perf_counter() - start, 3)}
            metrics.append(Metric(cond.name, 100 * error, "%", len(kept), conv))
    inputs = {"item": item_path, "features" if features is not None else "units": features or units_path}
    if features is not None:  # the report's Quantizer column then says what these rows are
        labels = {**labels, "quantizer": quantizer}
    return write_metrics(out, task="abx", metrics=metrics, labels=labels, inputs=inputs,
                         config={**dataclasses.asdict(cfg), "frame_rate": rate, "item_kind": kind,
                                 "distance": distance}, details=details)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--item", type=Path, required=True, help="ZeroSpeech .item file (triphone or phoneme)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", type=Path, help="folder of <utt-id>.pt tensors (T, D)")
    src.add_argument("--units", type=Path, help="units Parquet (frame-level or deduplicated), JSON lines "
                     "{name|id, units} (.jsonl[.gz]) or text units 'name<TAB>u1 u2 ...'")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--frame-rate", type=float,
                        help="Hz; default: the rate a units Parquet file or FEATDIR/_SUCCESS.json records, or 50")
    parser.add_argument("--config", default="{}", help='eval.config.AbxJob JSON: {"abx": {AbxConfig fields}, '
                        '"experiment": {"units": UnitsConfig, ...}} (the experiment gives the metric labels)')
    args = parser.parse_args(argv)
    job = loads(AbxJob, args.config)
    doc = run(args.item, args.out, features=args.features, units_path=args.units, frame_rate=args.frame_rate,
              cfg=job.abx, labels=labels_of(job.experiment))
    for m in doc["metrics"]:
        print(f"{m['metric']}: " + ("not computed" if m["value"] is None else f"{m['value']:.3f} %"))
    print(f"items used {doc['details']['items_used']} of {doc['details']['items_total']}, dropped "
          f"{doc['details']['items_dropped']}", file=sys.stderr)


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main, memory_hint=MEMORY_HINT)
