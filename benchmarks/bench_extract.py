"""Unit-extraction throughput per encoder on the current device, printed as JSON (real-time factors).

Usage: python -m benchmarks.bench_extract [--encoders spidr-small,spidr-base,hf-tiny,mfcc] [--seconds S]
                                          [--device auto] [--threads N] [--batch-seconds B] [--repeats 2]

For each encoder (random weights: SpidR small / base presets, a tiny HF HuBERT built from config, MFCC) the same
synthetic utterances (2-20 s, LibriSpeech-like lengths) are turned into k-means units (K = 256, layer 6 or the
last layer below it) twice:
  * baseline: one utterance per forward pass (what textlesslib / fairseq scripts do);
  * ours: `units.batching.encode_batched` (length-bucketed batches, bf16 autocast on CUDA).
Reported: real-time factor (seconds of audio per second of wall time) of each, their ratio, audio seconds per
CPU-second of the process (meaningful on a shared machine, where wall time depends on the other load), and whether
both paths gave the same units (fraction of equal frames; 1.0 in fp32, slightly below with bf16).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data.audio import SAMPLE_RATE
from units.batching import encode_batched
from units.config import RunOptions
from units.encoders import get_encoder
from units.kmeans import nearest_centroid


def utterances(total_seconds: float, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    wavs, total = [], 0.0
    while total < total_seconds:
        seconds = float(rng.uniform(2.0, 20.0))
        wavs.append(torch.from_numpy((0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)))
        total += seconds
    return wavs


def build(name: str, root: Path) -> dict:
    """The encoder spec of a benchmark entry (random weights saved under root)."""
    if name == "mfcc":
        return {"kind": "mfcc"}
    if name.startswith("spidr-"):
        from spidr.checkpoint import save_model
        from spidr.model import build_model

        path = root / f"{name}.pt"
        save_model(build_model(name.split("-", 1)[1], seed=0), path)
        return {"kind": "spidr", "checkpoint": str(path)}
    if name == "hf-tiny":
        from transformers import HubertConfig, HubertModel

        torch.manual_seed(0)
        cfg = HubertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                           conv_dim=(64,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4)
        HubertModel(cfg).save_pretrained(root / "hf-tiny")
        return {"kind": "hf", "model": str(root / "hf-tiny")}
    raise SystemExit(f"unknown encoder {name!r}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, spec: dict, wavs: list[torch.Tensor], args) -> dict:
    run = RunOptions(device=args.device, batch_seconds=args.batch_seconds, progress=False)
    enc = get_encoder(spec, run.device, run.precision)
    layer = 0 if enc.kind == "mfcc" else min(6, enc.num_layers)
    centroids = torch.randn(256, enc.dim, generator=torch.Generator().manual_seed(0)).to(enc.device)

    def quantise(ws: list[torch.Tensor]) -> list[torch.Tensor]:
        return [nearest_centroid(f.to(enc.device), centroids) for f in enc.features(ws, layer)]

    seconds = sum(w.numel() for w in wavs) / SAMPLE_RATE
    quantise(wavs[:2])  # warm-up (CUDA context, kernels, allocator)
    sync(enc.device)

    def timed(fn):
        sync(enc.device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync(enc.device)
        return out, time.perf_counter() - t0, time.process_time() - c0

    # Alternate the two paths and keep each one's best run: on a shared machine the other load comes and goes.
    t_single = c_single = t_batched = c_batched = float("inf")
    for _ in range(args.repeats):
        single, t, c = timed(lambda: [quantise([w])[0].cpu() for w in wavs])
        t_single, c_single = min(t_single, t), min(c_single, c)
        batched, t, c = timed(lambda: encode_batched(wavs, quantise, **run.batching(enc)))
        t_batched, c_batched = min(t_batched, t), min(c_batched, c)

    same = sum(int((a == b).sum()) for a, b in zip(single, batched, strict=True))
    frames = sum(a.numel() for a in single)
    return {
        "encoder": name,
        "layer": layer,
        "precision": "bf16" if enc.bf16 and enc.device.type == "cuda" else "fp32",
        "audio_seconds": round(seconds, 1),
        "utterances": len(wavs),
        "repeats": args.repeats,
        "baseline_one_at_a_time_rtf": round(seconds / t_single, 1),
        "batched_rtf": round(seconds / t_batched, 1),
        "speedup": round(t_single / t_batched, 2),
        # Audio seconds per CPU-second of this process (all threads): comparable on a shared, loaded machine.
        "baseline_audio_per_cpu_second": round(seconds / c_single, 1),
        "batched_audio_per_cpu_second": round(seconds / c_batched, 1),
        "same_units_fraction": round(same / frames, 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default="spidr-small,spidr-base,hf-tiny,mfcc")
    parser.add_argument("--seconds", type=float, help="audio per encoder (default: 600 on CUDA, 60 on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--batch-seconds", type=float, default=None, help="padded audio per batch")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path, alternating; the best counts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    seconds = args.seconds or (600.0 if cuda else 60.0)
    if args.batch_seconds is None:
        args.batch_seconds = 400.0 if cuda else 60.0
    wavs = utterances(seconds)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encoders.split(","):
            results.append(bench(name, build(name, Path(tmp)), wavs, args))
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(json.dumps({"device": device, "batch_seconds": args.batch_seconds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
