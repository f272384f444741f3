"""Faiss k-means on encoder features: fit on a seeded sample of a corpus's frames, saved with provenance; assignment.

Usage:
  python -m units.kmeans fit --config UNITS_JSON --manifest M.tsv --out KMEANS.npz [run options of units.extract]
      UNITS_JSON (units.config.UnitsConfig): {"encoder": {"kind": "spidr", "checkpoint": "enc.pt"}, "layer": 6,
      "quantizer": "kmeans", "k": 256, "fit": {"seed": 0, "max_frames": 500000, "niter": 50}}

The sample: utterances in a seeded random order are encoded (whole, so each frame has its full context) until
`max_frames` frames are collected, then exactly `max_frames` of those frames are drawn with the same seed. The
k-means file is one `.npz` holding `centroids` (K, D) float32 and `meta` (JSON: encoder spec, layer, K, seed,
corpus manifest and its sha256, frames used, objective, provenance). It is an artefact of its own, keyed by what
produced it: quantising features of another encoder or layer with it is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.config import loads
from common.io import atomic_write, file_sha256, provenance
from data.audio import SAMPLE_RATE
from data.manifest import read_manifest
from units.batching import encode_batched
from units.config import (
    MEMORY_HINT,
    EncoderSpec,
    RunOptions,
    UnitsConfig,
    add_run_options,
    run_options_from_args,
)
from units.encoders import get_encoder
from units.shards import iter_shards, plan_shards, progress_bar


class KMeansError(ValueError):
    """A k-means file or request that cannot be used; the message names the file or value."""


@dataclass(frozen=True)
class KMeansModel:
    centroids: np.ndarray  # (K, D) float32
    meta: dict[str, Any]

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written file."""
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, centroids=self.centroids.astype(np.float32),
                     meta=np.array(json.dumps(self.meta, sort_keys=True, default=str)))

    @classmethod
    def load(cls, path: str | Path) -> KMeansModel:
        path = Path(path)
        if not path.is_file():
            raise KMeansError(f"{path}: k-means file not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                centroids = np.asarray(data["centroids"], dtype=np.float32)
                meta = json.loads(str(data["meta"]))
        except KeyError as err:
            raise KMeansError(f"{path}: not a k-means file written by units.kmeans (no {err} array)") from err
        except (zipfile.BadZipFile, EOFError, zlib.error, ValueError) as err:  # e.g. cut short by a killed job
            raise KMeansError(f"{path}: k-means file is truncated or corrupt ({type(err).__name__}: {err}); delete "
                              "it and rerun the rule that fits it (fit_kmeans, `python -m units.kmeans fit`)") from err
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise KMeansError(f"{path}: centroids of shape {centroids.shape}, expected (K, D)")
        return cls(centroids, meta)

    def check_matches(self, spec: EncoderSpec, layer: int, path: str | Path = "k-means") -> None:
        """Refuse to quantise features of another encoder or layer than the ones this k-means was fitted on."""
        fitted = EncoderSpec.parse(self.meta["encoder"])
        if _spec_key(fitted) != _spec_key(spec) or int(self.meta["layer"]) != int(layer):
            raise KMeansError(
                f"{path}: fitted on encoder {fitted.to_dict()} layer {self.meta['layer']}, but the units ask for "
                f"encoder {spec.to_dict()} layer {layer}; fit a k-means for that encoder and layer"
            )


def _spec_key(spec: EncoderSpec) -> tuple:
    """Specs that name the same files compare equal (relative vs absolute paths)."""
    checkpoint = str(Path(spec.checkpoint).resolve()) if spec.checkpoint else None
    model = spec.model
    if model and Path(model).exists():
        model = str(Path(model).resolve())
    return spec.kind, checkpoint, model, spec.normalize


def import_faiss():
    """faiss, from whichever variant is installed (faiss-cpu or faiss-gpu-cu12: one at a time, see pyproject.toml)."""
    try:
        import faiss
    except ImportError as err:
        raise KMeansError(f"faiss is not installed ({err}): scripts/setup_venv.sh installs it (--gpu for the GPU "
                          "variant), or pip install -c constraints.txt -e '.[cpu]' ('.[gpu]' on CUDA "
                          "machines)") from None
    return faiss


def fit_kmeans(x: np.ndarray, k: int, *, seed: int, niter: int = 50, gpu: bool = False,
               verbose: bool = False) -> tuple[np.ndarray, float]:
    """Faiss Lloyd k-means (L2) on all rows of x; deterministic for a seed on CPU. Returns centroids, objective."""
    faiss = import_faiss()

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise KMeansError(f"k-means input must be (frames, dim), got shape {x.shape}")
    if k < 2:
        raise KMeansError(f"k={k}: need at least 2 clusters")
    if x.shape[0] < k:
        raise KMeansError(f"k={k} clusters but only {x.shape[0]} frames to fit them on; raise max_frames or lower k")
    # max_points_per_centroid above n/k: faiss must not subsample again (our sample is already the seeded one).
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, gpu=gpu, verbose=verbose,
                      max_points_per_centroid=x.shape[0] // k + 1)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).copy(), float(km.obj[-1]) if len(km.obj) else float("nan")


def nearest_centroid(x: Tensor, centroids: Tensor, chunk: int = 32768) -> Tensor:
    """Index of the nearest centroid (L2) per row, as int64, computed in fp32 on x's device."""
    x = x.float()
    c = centroids.to(device=x.device, dtype=torch.float32)
    c_sq = (c * c).sum(1)
    out = []
    for part in x.split(chunk):
        # ||x||^2 is the same for every centroid of a row, so it does not change the argmin.
        out.append((c_sq[None] - 2.0 * part @ c.T).argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def sample_plan(frames: np.ndarray, max_frames: int, rng: np.random.Generator,
                order: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """Rows (sorted) of a seeded random prefix of the utterances that holds >= max_frames frames, and the rest
    of the random order (to draw from if bad audio leaves the sample short)."""
    order = rng.permutation(len(frames)) if order is None else order
    cum = np.cumsum(frames[order])
    take = int(np.searchsorted(cum, max_frames) + 1) if len(cum) else 0
    return sorted(order[:take].tolist()), order[take:]


def fit_from_corpus(spec: str | dict | EncoderSpec, layer: int, manifest: str | Path, *, k: int, seed: int,
                    max_frames: int, out: str | Path, niter: int = 50, run=None, log=sys.stderr) -> KMeansModel:
    """Encode a seeded random sample of the corpus at `layer`, fit k-means on it, write OUT (see module doc)."""
    run = run or RunOptions()
    spec = EncoderSpec.parse(spec)
    if max_frames < k:
        raise KMeansError(f"max_frames={max_frames} < k={k}: cannot fit {k} clusters")
    encoder = get_encoder(spec, run.device, run.precision)
    encoder.validate(layer)
    table = read_manifest(manifest)
    ids, paths = table["id"].tolist(), table["path"].tolist()
    frames = np.array([encoder.frame_count(n) for n in table["num_samples"]], dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows, rest = sample_plan(frames, max_frames, rng)

    feats: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    collected, used_utts = 0, 0
    seconds = float(table["num_samples"].iloc[rows].sum()) / SAMPLE_RATE
    with progress_bar(seconds, "k-means sample", run.progress) as tick:
        while rows:
            shards = list(enumerate(plan_shards(table["num_samples"].iloc[rows].tolist(), run.shard_samples)))
            shards = [(i, [rows[j] for j in part]) for i, part in shards]
            for shard in iter_shards(ids, paths, shards, bad_audio=run.bad_audio, min_samples=encoder.window,
                                     workers=run.workers, log=log):
                skipped += shard.skipped
                outs = encode_batched(shard.wavs, lambda ws: encoder.features(ws, layer), **run.batching(encoder),
                                      progress=tick)
                feats += [o.float().numpy() for o in outs]
                collected += sum(o.shape[0] for o in outs)
                used_utts += len(outs)
            if collected >= max_frames or not len(rest):
                break
            # Bad audio left the sample short: draw more utterances from the same random order.
            rows, rest = sample_plan(frames, max_frames - collected, rng, order=rest)
    if not feats:
        raise KMeansError(f"{manifest}: no usable audio to fit k-means on")
    x = np.concatenate(feats)
    del feats
    if x.shape[0] > max_frames:
        x = x[np.sort(rng.choice(x.shape[0], max_frames, replace=False))]
    if skipped:
        print(f"k-means sample: {len(skipped)} bad audio file(s) skipped", file=log)

    gpu = encoder.device.type == "cuda" and _faiss_gpus() > 0
    print(f"k-means: fitting k={k} on {x.shape[0]} frames of dim {x.shape[1]} (faiss {'GPU' if gpu else 'CPU'})",
          file=log)
    centroids, objective = fit_kmeans(x, k, seed=seed, niter=niter, gpu=gpu)
    sizes = torch.bincount(nearest_centroid(torch.from_numpy(x), torch.from_numpy(centroids)), minlength=k)
    config = {"encoder": spec.to_dict(), "layer": layer, "k": k, "seed": seed, "max_frames": max_frames,
              "niter": niter, "manifest": str(manifest), **run.result_settings(encoder)}
    meta = {
        **config,
        "manifest_sha256": file_sha256(manifest),
        "encoder_info": encoder.describe(),
        "frames": int(x.shape[0]),
        "utterances": used_utts,
        "skipped": skipped,
        "objective": objective,
        "empty_clusters": int((sizes == 0).sum()),
        "faiss_gpu": gpu,
        "provenance": provenance(config),
    }
    model = KMeansModel(centroids, meta)
    model.save(out)
    print(f"k-means: wrote {out} (objective {objective:.4g}, {meta['empty_clusters']} empty clusters)", file=log)
    return model


def _faiss_gpus() -> int:
    faiss = import_faiss()

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit k-means on a seeded sample of a corpus's frames")
    fit.add_argument("--config", required=True,
                     help="units config JSON (units.config.UnitsConfig: encoder, layer, quantizer kmeans, k, fit)")
    fit.add_argument("--manifest", type=Path, required=True, help="corpus manifest TSV to sample frames from")
    fit.add_argument("--out", type=Path, required=True, help="the k-means file (.npz)")
    add_run_options(fit)
    args = parser.parse_args(argv)
    cfg = loads(UnitsConfig, args.config)
    if cfg.quantizer != "kmeans" or cfg.k is None or cfg.fit is None:
        raise KMeansError(f"--config: k-means fitting needs quantizer 'kmeans', 'k' and 'fit', got {args.config}")
    fit_from_corpus(cfg.encoder, cfg.layer, args.manifest, k=cfg.k, seed=cfg.fit.seed,
                    max_frames=cfg.fit.max_frames, out=args.out, niter=cfg.fit.niter,
                    run=run_options_from_args(args, cfg.extraction))


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main, memory_hint=MEMORY_HINT)
