"""Side by side: our SpidR training step against the official code's (the `spidr` package from PyPI); prints JSON.

Usage:
    benchmarks/setup_official.sh            # once: creates .venv-official (the official package; same torch)
    python benchmarks/bench_official.py [--preset base] [--batch 2] [--item-seconds 4] [--rounds 3] [--steps 3]
        [--warmup 1] [--device auto|cpu|cuda] [--threads 1] [--official-python .venv-official/bin/python]

Both codes build the same model (the paper's base config by default), in fp32, and run the same training step on
the same batch shape and masked frames: forward, loss over the masked frames, backward, gradient clipping, AdamW,
EMA teacher update. Unpadded batches: no attention mask, as the official loader passes none for them. Each
measurement is a fresh subprocess; the two codes alternate for `rounds` pairs so that a change in machine load hits
both, and each reports the median step time. The ratio `ours_speed_vs_official` > 1 means ours is faster.
Measured on CPU, and also on CUDA when it is available (`--device auto`).

Two clocks per step: wall time (perf_counter) and the process's CPU time (process_time, all its threads). On CPU
the workers run `--threads` threads (1 by default, OMP_NUM_THREADS too), so a step's CPU time is its work, which
other processes on a shared machine disturb far less than its wall time: on CPU the ratio is by CPU time
(`ratio_clock` says which) and `ours_speed_vs_official_wall` is the wall-time one. On CUDA the ratio is by wall
time (the host mostly waits on the device there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_PYTHON = REPO / ".venv-official" / "bin" / "python"


def step_times(model, wavs, idx, official: bool, steps: int, warmup: int, device) -> tuple[list[float], list[float]]:
    """(wall, process CPU) seconds per training step, the same step for both codes (only the model call differs)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), fused=device.type == "cuda" or None)
    model.train()
    times, cpu_times = [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        if official:  # per-frame losses, normalised by the caller as the official trainer does
            losses, _ = model(wavs, mask_indices=idx, attention_mask=None)
            loss = losses.sum() / idx.numel()
        else:  # our model normalises its loss itself
            loss, _ = model(wavs, idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if official:
            model.update_ema(i + 1)
        else:
            model.update_ema(0.999)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    return times, cpu_times


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    inputs = torch.load(args.inputs, weights_only=True)
    wavs, idx = inputs["wavs"].to(device), inputs["idx"].to(device)
    if args.variant == "official":
        if args.preset != "base":
            raise SystemExit("the official code is compared at its base config only")
        # The official package, not ours: this worker runs with .venv-official's python, outside the repository.
        official_config, official_models = (importlib.import_module(m) for m in ("spidr.config", "spidr.models"))
        model = official_models.SpidR(official_config.SpidRConfig()).to(device)
        where = official_models.__file__
    else:
        sys.path.insert(0, str(REPO))
        from spidr.config import TrainConfig
        from spidr.model import MODELS

        model = MODELS["spidr"](TrainConfig.from_dict({"kind": "spidr", "preset": args.preset}).model).to(device)
        where = str(REPO / "spidr")
    if args.variant == "official" and Path(where).resolve().is_relative_to(REPO / "spidr"):
        raise SystemExit("the official worker imported our spidr package; run it from .venv-official")
    times, cpu_times = step_times(model, wavs, idx, args.variant == "official", args.steps, args.warmup, device)
    return {"variant": args.variant, "code": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "step_seconds": times, "median_step_seconds": statistics.median(times),
            "step_cpu_seconds": cpu_times, "median_step_cpu_seconds": statistics.median(cpu_times),
            "parameters": sum(p.numel() for p in model.parameters())}


def make_inputs(path: Path, preset: str, batch: int, item_seconds: float) -> int:
    """The batch both codes train on: fixed waveforms and masked frames (our masking, fairseq's rule)."""
    sys.path.insert(0, str(REPO))
    import torch

    from data.audio import SAMPLE_RATE
    from spidr.config import TrainConfig
    from spidr.masking import mask_indices
    from spidr.model import build_model

    samples = int(item_seconds * SAMPLE_RATE)
    model_config = TrainConfig.from_dict({"kind": "spidr", "preset": preset}).model
    frames = build_model(model_config, teacher=False).frame_count(samples)
    gen = torch.Generator().manual_seed(0)
    wavs = torch.randn(batch, samples, generator=gen)
    wavs = (wavs - wavs.mean(1, keepdim=True)) / wavs.std(1, keepdim=True)
    torch.save({"wavs": wavs, "idx": mask_indices(batch, frames, generator=gen)}, path)
    return frames


def run(python: str, argv: list[str], threads: int | None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), *argv]
    env = dict(os.environ)
    if threads:  # also the OpenMP / MKL pools that torch.set_num_threads does not reach before they start
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(), env=env)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, device: str, inputs: Path) -> dict:
    common = ["--_worker", "--inputs", str(inputs), "--device", device, "--preset", args.preset, "--steps",
              str(args.steps), "--warmup", str(args.warmup)]
    threads = args.threads if device == "cpu" else None  # on CUDA: torch's default host threads
    if threads:
        common += ["--threads", str(threads)]
    rounds: dict[str, list[dict]] = {"ours": [], "official": []}
    for r in range(args.rounds):  # alternate, starting with the other code every round
        order = ("ours", "official") if r % 2 == 0 else ("official", "ours")
        for variant in order:
            python = sys.executable if variant == "ours" else args.official_python
            rounds[variant].append(run(python, [*common, "--variant", variant], threads))
    out: dict = {"device": device, "threads": rounds["ours"][0]["threads"],
                 "ratio_clock": "process_cpu_time" if device == "cpu" else "wall"}
    for variant, runs in rounds.items():
        medians = [r["median_step_seconds"] for r in runs]
        cpu_medians = [r["median_step_cpu_seconds"] for r in runs]
        out[variant] = {"code": runs[0]["code"], "parameters": runs[0]["parameters"],
                        "median_step_seconds": statistics.median(medians), "round_medians": medians,
                        "median_step_cpu_seconds": statistics.median(cpu_medians), "round_cpu_medians": cpu_medians}
    wall = out["official"]["median_step_seconds"] / out["ours"]["median_step_seconds"]
    cpu = out["official"]["median_step_cpu_seconds"] / out["ours"]["median_step_cpu_seconds"]
    out["ours_speed_vs_official"] = cpu if device == "cpu" else wall
    out["ours_speed_vs_official_wall"] = wall
    out["ours_speed_vs_official_cpu_time"] = cpu
    for variant in rounds:
        out[variant]["audio_seconds_per_second"] = args.batch * args.item_seconds / out[variant]["median_step_seconds"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--item-seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="threads on CPU (0: torch's default)")
    parser.add_argument("--official-python", default=str(OFFICIAL_PYTHON))
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(args)))
        return
    if not Path(args.official_python).exists():
        raise SystemExit(f"{args.official_python} not found: run benchmarks/setup_official.sh first")
    import torch

    devices = ["cpu"] + (["cuda"] if args.device != "cpu" and torch.cuda.is_available() else [])
    if args.device == "cuda":
        devices = ["cuda"]
    results: dict = {"benchmark": "spidr_vs_official", "preset": args.preset, "precision": "fp32",
                     "batch": args.batch, "item_seconds": args.item_seconds, "rounds": args.rounds,
                     "steps": args.steps, "cpu_cores": os.cpu_count(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        results["frames"] = make_inputs(inputs, args.preset, args.batch, args.item_seconds)
        for device in devices:
            results[device] = compare(args, device, inputs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
