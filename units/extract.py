"""Feature and unit extraction: per-utterance feature files (for ABX) and frame-level 50 Hz units (Parquet).

Usage:
  python -m units.extract features --config UNITS_JSON --manifest M.tsv --out DIR [--codebook-probs]
      One DIR/<utt-id>.pt float32 tensor (frames, dim) per utterance, what fastabx reads
      (`Dataset.from_item(item, DIR, 50)`). Resumable: finished files are kept and skipped. DIR/_SUCCESS.json
      (provenance, counts, skipped files) is written last; DIR/_CONFIG.json guards against mixing configs.
  python -m units.extract units --config UNITS_JSON [--kmeans K.npz] --manifest M.tsv --out UNITS.parquet
      Frame-level units in the units.format format (vocab_size = codebook size or K). Resumable by shard from a
      work directory beside the output (default: .UNITS.parquet.work/), removed once the file is complete.
      --shard I --num-shards N: only corpus shard I of N (consecutive manifest rows, balanced by audio), one
      independent job each (run them in parallel), then:
  python -m units.gather SHARD_0.parquet ... SHARD_N-1.parquet --out UNITS.parquet   (units/gather.py, no torch)
      Stream the shard files into one units file, identical in rows and order to an unsharded run.
  python -m units.extract text UNITS.parquet OUT.txt
      Export to `id<TAB>u1 u2 ...` lines (fairseq / textlesslib), for frame-level or deduplicated units.
  python -m units.extract validate --config UNITS_JSON [--train-config JSON]
      Check that the encoder, layer and quantizer fit together (exit status 1 and a message naming the value);
      --train-config gives the depth and heads of a SpidR / DinoSR that is still to be pretrained.

UNITS_JSON (units.config.UnitsConfig): {"encoder": ENCODER, "layer": L, "quantizer": "codebook"|"kmeans"|null
(null: continuous features), "extraction": {"bad_audio": "fail"|"skip"}}, ENCODER {"kind": "spidr"|"dinosr",
"checkpoint": PATH} | {"kind": "hf", "model": NAME_OR_DIR} | {"kind": "mfcc"}. Layer numbering: see units.config.
Run options (device, precision, batching, chunking): `--help` of a subcommand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common.config import loads
from common.io import atomic_write, atomic_write_json, file_sha256, provenance
from data.audio import SAMPLE_RATE
from data.manifest import ManifestError, read_manifest
from units.batching import encode_batched
from units.config import (
    MEMORY_HINT,
    QUANTIZERS,
    EncoderConfigError,
    EncoderSpec,
    RunOptions,
    UnitsConfig,
    add_run_options,
    run_options_from_args,
)
from units.encoders import Encoder, check_units_config, get_encoder
from units.format import UnitsWriter, write_text_units
from units.gather import MAX_SKIPPED_RECORDED, merge_units_files
from units.kmeans import KMeansError, KMeansModel, nearest_centroid
from units.shards import iter_shards, plan_shards, progress_bar, split_rows

SUCCESS = "_SUCCESS.json"
CONFIG = "_CONFIG.json"


# ---------------------------------------------------------------------------------------------------------------
# Quantizers: a batch of waveforms -> one int64 unit tensor per waveform


class CodebookQuantizer:
    """Argmax of the encoder's own codebook head at `layer` (SpidR / DinoSR; no clustering)."""

    def __init__(self, encoder: Encoder, layer: int) -> None:
        encoder.validate(layer, "codebook")
        self.encoder, self.layer = encoder, layer
        self.vocab_size = int(encoder.codebook_size)

    def __call__(self, wavs: list[Tensor]) -> list[Tensor]:
        return [p.argmax(-1) for p in self.encoder.codebook_probs(wavs, self.layer)]

    def describe(self) -> dict[str, Any]:
        return {"quantizer": "codebook", "vocab_size": self.vocab_size}


class KMeansQuantizer:
    """Nearest k-means centroid (L2) of the continuous features at `layer`."""

    def __init__(self, encoder: Encoder, layer: int, kmeans: KMeansModel, spec: EncoderSpec, path: str) -> None:
        encoder.validate(layer, "kmeans")
        kmeans.check_matches(spec, layer, path)
        if kmeans.dim != encoder.dim:
            raise KMeansError(
                f"{path}: centroids of dim {kmeans.dim}, but the encoder's features have dim {encoder.dim}"
            )
        self.encoder, self.layer, self.path = encoder, layer, path
        self.centroids = torch.from_numpy(kmeans.centroids).to(encoder.device)
        self.vocab_size = kmeans.k
        self.sha256 = file_sha256(path)

    def __call__(self, wavs: list[Tensor]) -> list[Tensor]:
        feats = self.encoder.features(wavs, self.layer)
        return [nearest_centroid(f.to(self.centroids.device), self.centroids) for f in feats]

    def describe(self) -> dict[str, Any]:
        return {"quantizer": "kmeans", "vocab_size": self.vocab_size, "kmeans": self.path,
                "kmeans_sha256": self.sha256}


def make_quantizer(encoder: Encoder, spec: EncoderSpec, layer: int, quantizer: str,
                   kmeans: str | Path | None = None) -> CodebookQuantizer | KMeansQuantizer:
    if quantizer not in QUANTIZERS:
        raise EncoderConfigError(f"quantizer={quantizer!r}; expected one of {QUANTIZERS}")
    if quantizer == "codebook":
        if kmeans is not None:
            raise EncoderConfigError("--kmeans is only for quantizer 'kmeans'")
        return CodebookQuantizer(encoder, layer)
    if kmeans is None:
        raise EncoderConfigError("quantizer 'kmeans' needs --kmeans PATH (fit one with python -m units.kmeans fit)")
    return KMeansQuantizer(encoder, layer, KMeansModel.load(kmeans), spec, str(kmeans))


# ---------------------------------------------------------------------------------------------------------------
# Units


def _prepare_workdir(work: Path, key: dict[str, Any], log) -> None:
    """A work directory holds the shards of exactly one config; those of another are stale and removed."""
    marker = work / "key.json"
    if work.exists():
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if old == json.loads(json.dumps(key, default=str)):
            return
        print(f"{work}: shards of another config, removing them", file=log)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_json(marker, key)


def extract_units(spec: str | dict | EncoderSpec, layer: int, quantizer: str, manifest: str | Path, out: str | Path,
                  *, kmeans: str | Path | None = None, run: RunOptions | None = None,
                  work_dir: str | Path | None = None, shard: tuple[int, int] = (0, 1),
                  log=sys.stderr) -> dict[str, Any]:
    """Write frame-level units of every usable utterance of the manifest (manifest order) to OUT.

    shard=(i, n): only corpus shard i of n, whole resumable pieces of the manifest balanced by audio, for
    `gather_units`; the units of an utterance do not depend on the shard it is in. Returns the summary recorded in
    the file's provenance (utterances, frames, seconds, skipped files).
    """
    run = run or RunOptions()
    spec = EncoderSpec.parse(spec)
    out = Path(out)
    index, count = shard
    if not 0 <= index < count:
        raise EncoderConfigError(f"--shard {index} of --num-shards {count}: expected 0 <= shard < num_shards")
    encoder = get_encoder(spec, run.device, run.precision)
    quant = make_quantizer(encoder, spec, layer, quantizer, kmeans)
    table = read_manifest(manifest)
    config = {"encoder": spec.to_dict(), "layer": layer, **quant.describe(), "manifest": str(manifest),
              **run.result_settings(encoder)}
    key = {**config, "manifest_sha256": file_sha256(manifest), "shard_samples": run.shard_samples,
           "shard": [index, count]}
    work = Path(work_dir) if work_dir else out.with_name(f".{out.name}.work")
    _prepare_workdir(work, key, log)

    # Resumable pieces of at most shard_hours of audio, planned over the WHOLE manifest; this job takes whole pieces
    # (balanced by audio). Pieces are also the unit of length bucketing, so every utterance is batched with the same
    # neighbours whatever the shard count: sharded units equal unsharded ones bit for bit.
    ids, paths, sizes = table["id"].tolist(), table["path"].tolist(), table["num_samples"].tolist()
    every = plan_shards(sizes, run.shard_samples)
    taken = split_rows([sum(sizes[r] for r in rows) for rows in every], count)[index]
    pieces = [(i, every[i]) for i in taken]
    mine = range(pieces[0][1][0], pieces[-1][1][-1] + 1) if pieces else range(0, 0)
    parts = {i: work / f"shard-{i:06d}.parquet" for i, _ in pieces}
    todo = [(i, rows) for i, rows in pieces if not parts[i].is_file()]
    if len(todo) < len(pieces):
        print(f"resuming: {len(pieces) - len(todo)} of {len(pieces)} shards already done in {work}", file=log)
    seconds = sum(float(table["num_samples"].iloc[rows].sum()) for _, rows in todo) / SAMPLE_RATE
    with progress_bar(seconds, f"units {spec.kind} L{layer} {quantizer}", run.progress) as tick:
        for piece in iter_shards(ids, paths, todo, bad_audio=run.bad_audio, min_samples=encoder.window,
                                 workers=run.workers, log=log):
            units = [u.numpy() for u in encode_batched(piece.wavs, quant, **run.batching(encoder), progress=tick)]
            totals = {"utterances": len(units), "frames": sum(u.size for u in units),
                      "skipped_count": len(piece.skipped), "skipped": piece.skipped}
            with UnitsWriter(parts[piece.index], vocab_size=quant.vocab_size, frame_rate=encoder.frame_rate,
                             provenance={"summary": totals}) as writer:
                for uid, u in zip(piece.ids, units, strict=True):
                    writer.write(uid, u)

    prov = {**provenance(config), "encoder_info": encoder.describe(),
            "run": {"device": str(encoder.device), "batch_seconds": run.batch_seconds_for(encoder),
                    "max_batch": run.max_batch}}
    if count > 1:
        prov["shard"] = {"index": index, "count": count, "rows": [mine.start, mine.stop]}
    summary = merge_units_files(list(parts.values()), out, prov, quant.vocab_size, encoder.frame_rate)
    shutil.rmtree(work)
    what = f" (shard {index} of {count})" if count > 1 else ""
    print(f"units: wrote {out}{what}: {summary['utterances']} utterances, {summary['frames']} frames, "
          f"{summary['skipped_count']} bad audio file(s) skipped", file=log)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Features


def _save_tensor(tensor: Tensor, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(tensor.contiguous(), tmp)


def extract_features(spec: str | dict | EncoderSpec, layer: int, manifest: str | Path, out_dir: str | Path, *,
                     codebook_probs: bool = False, run: RunOptions | None = None, log=sys.stderr) -> dict[str, Any]:
    """Write DIR/<utt-id>.pt (float32, (frames, dim)) per utterance, then DIR/_SUCCESS.json (see module doc)."""
    run = run or RunOptions()
    spec = EncoderSpec.parse(spec)
    out_dir = Path(out_dir)
    encoder = get_encoder(spec, run.device, run.precision)
    encoder.validate(layer, "codebook" if codebook_probs else None)
    table = read_manifest(manifest)
    ids, paths = table["id"].tolist(), table["path"].tolist()
    bad_ids = [i for i in ids if not i or "/" in i or os.sep in i or i.startswith(".")]
    if bad_ids:
        raise ManifestError(f"{manifest}: utterance ids {bad_ids[:5]} cannot name feature files (ABX matches "
                            "items to files by stem: build this manifest with ids: stem)")
    config = {"encoder": spec.to_dict(), "layer": layer,
              "representation": "codebook_probs" if codebook_probs else "features",
              "manifest": str(manifest), "manifest_sha256": file_sha256(manifest), **run.result_settings(encoder)}
    guard = out_dir / CONFIG
    if out_dir.exists():
        old = json.loads(guard.read_text()) if guard.is_file() else None
        if old != json.loads(json.dumps(config, default=str)):
            stale = list(out_dir.glob("*.pt"))
            if stale:
                print(f"{out_dir}: {len(stale)} feature files of another config, removing them", file=log)
            for path in stale:
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUCCESS).unlink(missing_ok=True)
    atomic_write_json(guard, config)

    rows = [r for r, uid in enumerate(ids) if not (out_dir / f"{uid}.pt").is_file()]
    if len(rows) < len(ids):
        print(f"resuming: {len(ids) - len(rows)} of {len(ids)} feature files already in {out_dir}", file=log)
    sizes = table["num_samples"].iloc[rows].tolist()
    shards = [(i, [rows[j] for j in part]) for i, part in enumerate(plan_shards(sizes, run.shard_samples))]

    def compute(wavs: list[Tensor]) -> list[Tensor]:
        outs = encoder.codebook_probs(wavs, layer) if codebook_probs else encoder.features(wavs, layer)
        return [o.float() for o in outs]

    skipped: list[dict[str, str]] = []
    with progress_bar(sum(sizes) / SAMPLE_RATE, f"features {spec.kind} L{layer}", run.progress) as tick:
        for shard in iter_shards(ids, paths, shards, bad_audio=run.bad_audio, min_samples=encoder.window,
                                 workers=run.workers, log=log):
            skipped += shard.skipped
            feats = encode_batched(shard.wavs, compute, **run.batching(encoder), progress=tick)
            for uid, f in zip(shard.ids, feats, strict=True):
                _save_tensor(f, out_dir / f"{uid}.pt")
    written = sum((out_dir / f"{uid}.pt").is_file() for uid in ids)
    summary = {"utterances": written, "skipped_count": len(skipped), "skipped": skipped[:MAX_SKIPPED_RECORDED],
               "frame_rate": encoder.frame_rate, "dim": encoder.codebook_size if codebook_probs else encoder.dim}
    atomic_write_json(out_dir / SUCCESS, {**provenance(config), "encoder_info": encoder.describe(), **summary})
    print(f"features: {written} files in {out_dir}, {len(skipped)} bad audio file(s) skipped", file=log)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="units config JSON (units.config.UnitsConfig: encoder spec, "
                       "layer, quantizer (null for features), k-means fit, extraction.bad_audio)")

    feats = sub.add_parser("features", help="per-utterance feature files DIR/<utt-id>.pt (for ABX)")
    common(feats)
    feats.add_argument("--manifest", type=Path, required=True)
    feats.add_argument("--out", type=Path, required=True, help="output directory")
    feats.add_argument("--codebook-probs", action="store_true",
                       help="codebook-head probabilities instead of hidden features (SpidR / DinoSR)")
    add_run_options(feats)

    units = sub.add_parser("units", help="frame-level units (Parquet, units.format format)")
    common(units)
    units.add_argument("--kmeans", type=Path, help="k-means file of units.kmeans fit (quantizer kmeans)")
    units.add_argument("--manifest", type=Path, required=True)
    units.add_argument("--out", type=Path, required=True, help="units file (.parquet)")
    units.add_argument("--work-dir", type=Path, help="resumable pieces (default: .OUT.work beside OUT)")
    units.add_argument("--shard", type=int, default=0, help="extract only corpus shard I (0-based) of --num-shards")
    units.add_argument("--num-shards", type=int, default=1,
                       help="split the manifest into N shards of consecutive rows balanced by audio (default 1)")
    add_run_options(units)

    text = sub.add_parser("text", help="export a units file to `id<TAB>u1 u2 ...` lines")
    text.add_argument("units", type=Path)
    text.add_argument("out", type=Path)

    check = sub.add_parser("validate", help="check an encoder / layer / quantizer combination")
    common(check)
    check.add_argument("--train-config", help="spidr.config JSON of an encoder still to be pretrained")

    args = parser.parse_args(argv)
    cfg = loads(UnitsConfig, args.config) if args.command != "text" else None
    if args.command == "features":
        if cfg.quantizer is not None:
            raise EncoderConfigError(f"--config: features are continuous: quantizer must be null, got "
                                     f"{cfg.quantizer!r}")
        extract_features(cfg.encoder, cfg.layer, args.manifest, args.out, codebook_probs=args.codebook_probs,
                         run=run_options_from_args(args, cfg.extraction))
    elif args.command == "units":
        if cfg.quantizer is None:
            raise EncoderConfigError("--config: units need a quantizer ('codebook' or 'kmeans')")
        extract_units(cfg.encoder, cfg.layer, cfg.quantizer, args.manifest, args.out, kmeans=args.kmeans,
                      run=run_options_from_args(args, cfg.extraction), work_dir=args.work_dir,
                      shard=(args.shard, args.num_shards))
    elif args.command == "text":
        write_text_units(args.units, args.out)
    else:
        try:
            train = json.loads(args.train_config) if args.train_config else None
        except json.JSONDecodeError as err:
            raise EncoderConfigError(f"--train-config is not JSON ({err}): {args.train_config!r}") from None
        check_units_config(cfg.encoder, cfg.layer, cfg.quantizer, train_config=train)
        print("ok")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main, memory_hint=MEMORY_HINT)
