"""Benchmark SpidR pretraining and feature extraction on the current device; prints one JSON object.

Usage:
    python benchmarks/bench_spidr.py [--preset small] [--kind spidr] [--batch-seconds 24] [--item-seconds 3]
        [--steps 5] [--warmup 2] [--threads N] [--compile] [--precision auto|fp32|bf16] [--peak-tflops F]
        [--skip-official-settings] [--profile] [--modes train,extract]

Each measurement runs in its own subprocess (clean peak memory). Two variants of the same model and batch:
  * "ours": unpadded batches run with no attention mask (SDPA may pick FlashAttention), a channels-last conv
    front end, optional torch.compile;
  * "ours_official_settings": OUR code patched to the execution settings the official code used when this was
    written: a boolean (B, 1, T, T) attention mask always passed (and the positional conv masked), conv1d +
    transposed LayerNorms in the front end, cuDNN attention allowed at inference, no compile. It is not the
    official code: benchmarks/bench_official.py runs the official package itself, side by side.
Reported: training throughput in audio seconds per second (wall, and per CPU-second on CPU, where the machine may
be shared), peak memory, forward-only extraction speed (x real time, one layer through
units.batching.encode_batched), and on CUDA the model FLOP utilisation (analytic matmul/conv FLOPs per step / time /
peak bf16 FLOPS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import units.batching
from data.audio import SAMPLE_RATE
from spidr.config import ModelConfig, TrainConfig
from spidr.masking import mask_indices
from spidr.model import MODELS, ConvBlock, FeatureExtractor, SelfAttention, Transformer, compile_model, standardize

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


# ---------------------------------------------------------------------------------------------------------------
# The official code's execution settings, patched onto our modules


@contextlib.contextmanager
def official_settings():
    """Boolean (B,1,T,T) attention mask always passed; conv1d + transposes in the front end; PyTorch's default
    attention backends at inference, cuDNN's included (official code)."""
    saved = (Transformer.forward, SelfAttention.forward, ConvBlock.forward, FeatureExtractor.forward,
             units.batching.INFERENCE_SDPA)
    t_fwd, a_fwd = Transformer.forward, SelfAttention.forward

    def transformer_forward(self, x, valid=None, **kw):
        if valid is None:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return t_fwd(self, x, valid, **kw)

    def attention_forward(self, x, attn_mask=None):
        if attn_mask is not None:
            attn_mask = attn_mask.expand(x.shape[0], 1, x.shape[1], x.shape[1])
        return a_fwd(self, x, attn_mask)

    def block_forward(self, x):
        x = self.conv(x)
        x = F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.layer_norm.weight, self.layer_norm.bias)
        return F.gelu(x.transpose(1, 2))

    def extractor_forward(self, wav):
        x = wav.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)

    Transformer.forward, SelfAttention.forward = transformer_forward, attention_forward
    ConvBlock.forward, FeatureExtractor.forward = block_forward, extractor_forward
    units.batching.INFERENCE_SDPA = [SDPBackend.CUDNN_ATTENTION, *units.batching.INFERENCE_SDPA]
    try:
        yield
    finally:
        (Transformer.forward, SelfAttention.forward, ConvBlock.forward, FeatureExtractor.forward,
         units.batching.INFERENCE_SDPA) = saved


# ---------------------------------------------------------------------------------------------------------------
# FLOPs


def step_flops(cfg: ModelConfig, batch: int, samples: int, masked: int, *, train: bool = True) -> float:
    """Analytic FLOPs (2 x MACs) of one training step (student fwd+bwd = 3x fwd, teacher fwd) or one forward."""
    conv, length, c_in = 0.0, samples, 1
    for c, k, s in cfg.conv_layers:
        length = (length - k) // s + 1
        conv += 2 * batch * length * c * c_in * k
        c_in = c
    t, d, f = length, cfg.embed_dim, cfg.ffn_dim
    proj = 2 * batch * t * c_in * d
    k = max(3, cfg.pos_conv_kernel // cfg.pos_conv_depth)
    pos = 2 * batch * t * cfg.pos_conv_depth * d * (d // cfg.pos_conv_groups) * k
    layer = 2 * batch * t * (4 * d * d + 2 * d * f) + 4 * batch * t * t * d
    encoder = pos + cfg.num_layers * layer
    heads = 2 * batch * masked * d * cfg.codebook_size * cfg.num_codebooks
    codebooks = 2 * 2 * batch * masked * d * cfg.codebook_size * cfg.num_codebooks  # distances + sums
    if not train:
        return conv + proj + encoder
    return 3 * (conv + proj + encoder + heads) + encoder + codebooks


# ---------------------------------------------------------------------------------------------------------------
# Workers (one per measurement, in a subprocess)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    cfg = TrainConfig.from_dict({"kind": args.kind, "preset": args.preset})
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    reference = args.variant == "ours_official_settings"
    model = MODELS[args.kind](cfg.model).to(device)
    ctx = official_settings() if reference else contextlib.nullcontext()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if args.compile and not reference:
        compile_model(model)  # as spidr.train does
    out: dict = {"variant": args.variant, "mode": args.mode}
    with ctx:
        if args.mode == "train":
            samples = int(args.item_seconds * SAMPLE_RATE)
            batch = max(1, int(args.batch_seconds * SAMPLE_RATE) // samples)
            wavs = torch.randn(batch, samples, device=device)
            idx = mask_indices(batch, model.frame_count(samples), generator=torch.Generator().manual_seed(0))
            idx = idx.to(device)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                                    fused=device.type == "cuda" or None)
            model.train()

            def step():
                with amp:
                    loss, _ = model(wavs, idx)  # the per-frame mean
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                model.update_ema(0.999)

            for _ in range(args.warmup):
                step()
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            sync(device)
            wall, cpu = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
            audio = batch * samples / SAMPLE_RATE
            flops = step_flops(cfg.model, batch, samples, idx.shape[1])
            if args.profile:
                out["profile_top_ops"] = profile_steps(step, device)
            out |= {"batch": batch, "item_seconds": args.item_seconds, "seconds_per_step": wall,
                    "audio_seconds_per_second": audio / wall, "tflops_per_step": flops / 1e12,
                    "achieved_tflops": flops / wall / 1e12}
            if device.type == "cpu":
                out["audio_seconds_per_cpu_second"] = audio / cpu
        else:
            model.eval()
            rng = torch.Generator().manual_seed(0)
            lengths = torch.randint(2 * SAMPLE_RATE, int(args.extract_max_seconds * SAMPLE_RATE), (args.extract_utts,),
                                    generator=rng)
            wavs = [torch.randn(int(n), generator=rng) for n in lengths]
            layer = min(6, model.num_layers)
            kw = {"frame_count_fn": model.frame_count, "batch_samples": int(args.extract_batch_seconds * SAMPLE_RATE),
                  "max_batch": 10**6}

            def compute(pieces):  # what units.encoders.SpidREncoder.features does
                x, lengths = units.batching.pad([standardize(w.to(device)) for w in pieces])
                with units.batching.inference_context(device, bf16):
                    out = model.layer_outputs(x, [layer], lengths)[layer]
                return [out[b, : model.frame_count(n)] for b, n in enumerate(lengths)]

            units.batching.encode_batched(wavs[: max(1, len(wavs) // 4)], compute, **kw)  # warmup
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.extract_repeats):
                units.batching.encode_batched(wavs, compute, **kw)
            sync(device)
            wall = (time.perf_counter() - t0) / args.extract_repeats
            cpu = (time.process_time() - c0) / args.extract_repeats
            audio = float(lengths.sum()) / SAMPLE_RATE
            out |= {"utterances": len(wavs), "audio_seconds": audio, "layer": layer, "x_real_time": audio / wall}
            if device.type == "cpu":
                out["x_real_time_per_cpu_second"] = audio / cpu
        out["peak_memory_mb"] = peak_memory_mb(device)
    return out


def profile_steps(step, device: torch.device, steps: int = 3, top: int = 25) -> list[dict]:
    """The ops that take the most device (CUDA) or CPU self time over a few training steps, for finding waste."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    # Both ATen ops and the kernels they launch are listed (each with its own self time), so compare an entry
    # with `seconds_per_step` rather than summing entries.
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key[:80], "ms_per_step": round(getattr(e, key) / 1e3 / steps, 3),
             "calls_per_step": e.count // steps} for e in rows]


def run_worker(argv: list[str], variant: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, *argv, "--_worker", "--variant", variant, "--mode", mode]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({variant}/{mode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="default: base on CUDA, small on CPU")
    parser.add_argument("--kind", default="spidr", choices=["spidr", "dinosr"])
    parser.add_argument("--batch-seconds", type=float, default=None, help="audio per step (default 237.5 / 24)")
    parser.add_argument("--item-seconds", type=float, default=None, help="utterance length (default 15 / 3)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: from the GPU name)")
    parser.add_argument("--extract-utts", type=int, default=None)
    parser.add_argument("--extract-max-seconds", type=float, default=20.0)
    parser.add_argument("--extract-batch-seconds", type=float, default=None)
    parser.add_argument("--extract-repeats", type=int, default=1)
    parser.add_argument("--skip-official-settings", action="store_true",
                        help="only our settings (not our code patched to the official code's settings)")
    parser.add_argument("--profile", action="store_true", help="add the top ops of 3 profiled training steps")
    parser.add_argument("--modes", default="train,extract", help="which measurements (train, extract or both)")
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.preset = args.preset or ("base" if cuda else "small")
    args.batch_seconds = args.batch_seconds or (3_800_000 / SAMPLE_RATE if cuda else 24.0)
    args.item_seconds = args.item_seconds or (15.0 if cuda else 3.0)
    args.extract_utts = args.extract_utts or (256 if cuda else 16)
    args.extract_batch_seconds = args.extract_batch_seconds or (400.0 if cuda else 120.0)  # H100: best of 100-2400
    if args._worker:
        print(json.dumps(worker(args)))
        return
    argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    fixed = ["--preset", args.preset, "--batch-seconds", str(args.batch_seconds), "--item-seconds",
             str(args.item_seconds), "--extract-utts", str(args.extract_utts), "--extract-batch-seconds",
             str(args.extract_batch_seconds)]
    argv = [*argv, *fixed]
    results: dict = {
        "benchmark": "spidr", "preset": args.preset, "kind": args.kind, "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "threads": args.threads or torch.get_num_threads(), "compile": args.compile, "precision": args.precision,
    }
    if not cuda:
        results["load_average"] = os.getloadavg()
    variants = ["ours"] if args.skip_official_settings else ["ours", "ours_official_settings"]
    modes = [m for m in ("train", "extract") if m in args.modes.split(",")]
    if not modes or set(args.modes.split(",")) - {"train", "extract"}:
        parser.error(f"--modes {args.modes!r}: expected train, extract or train,extract")
    for mode in modes:
        for variant in variants:
            results[f"{mode}_{variant}"] = run_worker(argv, variant, mode)
    if not args.skip_official_settings and "train" in modes:
        t_o, t_r = results["train_ours"], results["train_ours_official_settings"]
        results["train_speedup_vs_official_settings"] = (
            t_o["audio_seconds_per_second"] / t_r["audio_seconds_per_second"])
        if not cuda:
            results["train_speedup_vs_official_settings_cpu_time"] = (
                t_o["audio_seconds_per_cpu_second"] / t_r["audio_seconds_per_cpu_second"])
    if not args.skip_official_settings and "extract" in modes:
        e_o, e_r = results["extract_ours"], results["extract_ours_official_settings"]
        results["extract_speedup_vs_official_settings"] = e_o["x_real_time"] / e_r["x_real_time"]
    if cuda:
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in results["device"]), None)
        if peak and "train" in modes:
            results["peak_bf16_tflops"] = peak
            for variant in variants:
                results[f"train_{variant}"]["mfu"] = results[f"train_{variant}"]["achieved_tflops"] / peak
        # the paper's codebase: 400k steps of 3.8M samples per GPU in 15 h on 16 H100 (0.135 s per step per GPU)
        results["paper_codebase_audio_seconds_per_second_per_h100"] = 3_800_000 / SAMPLE_RATE / (15 * 3600 / 400_000)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
