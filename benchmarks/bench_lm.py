"""Unit-LM benchmark (prints JSON): training tokens/s and peak memory per preset, ours vs a plain HF `Trainer`.

Both trainers run the same model (same preset, seed, vocabulary), the same packed blocks with the same
per-utterance attention masks, micro batch, gradient accumulation, AdamW, warmup + cosine floor, clipping and
precision, each in a fresh subprocess (so peak memory is per run). Ours is `lm.train.train` itself, the entry
point the workflow calls. Also: scoring sequences/s of `lm.score.score_sequences`, and on CUDA the model FLOP
utilisation (6 N + 12 L d T FLOPs per token, N = non-embedding parameters + the output projection).

    python benchmarks/bench_lm.py                       # CPU: presets tiny, tiny-opt
    python benchmarks/bench_lm.py --presets opt-125m,llama-125m --context-length 1024 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bf16 dense peak FLOP/s of the cards we may meet (no sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A5000": 111e12}


def _peak_memory_mib(device) -> dict[str, float]:
    import torch

    if device.type == "cuda":
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # whole process


def _throughput(step_times: list[tuple[int, float]], warmup: int, tokens_per_step: int) -> float:
    """Tokens/s over the steps after `warmup`, from (step, wall time at its end) pairs."""
    times = dict(step_times)
    last = max(times)
    return (last - warmup) * tokens_per_step / (times[last] - times[warmup])


def worker_ours(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import lm.train

    stamps: list[tuple[int, float]] = []
    real_micro_batches = lm.train.micro_batches

    def stamped(blocks, cfg, step, dist):
        # called at the start of step `step` (0-based): the previous `step` steps are done
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        stamps.append((step, time.perf_counter()))
        return real_micro_batches(blocks, cfg, step, dist)

    lm.train.micro_batches = stamped
    cfg = lm.train.TrainConfig.from_dict(job["config"])
    work = Path(job["tmp"]) / "ours"
    lm.train.train(job["units"], work / "work", work / "model", cfg)
    device = lm.train.setup_distributed().device
    # the last stamp is the start of the last step: the final evaluation and model writing are not timed
    return {"tokens_per_s": _throughput(stamps, job["warmup_steps"], cfg.batch_size * cfg.context_length),
            **_peak_memory_mib(device)}


def worker_hf_trainer(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lm.data import IGNORE_INDEX, PackedBlocks, prepare_token_arrays, train_block_ids
    from lm.model import UnitVocab, build_config, build_model, document_causal_mask
    from lm.train import TrainConfig
    from units.format import read_units_meta

    # a collator cannot stack FlexAttention BlockMasks: the baseline keeps the dense mask whatever ours uses
    cfg = TrainConfig.from_dict({**job["config"], "attn_implementation": "sdpa"})
    cuda = torch.cuda.is_available()
    vocab = UnitVocab(int(read_units_meta(job["units"])["vocab_size"]))
    arrays, _ = prepare_token_arrays(job["units"], Path(job["tmp"]) / "hf" / "data",
                                     valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    blocks = PackedBlocks(arrays["train"], cfg.context_length, vocab)

    class Blocks(torch.utils.data.Dataset):
        """The same blocks in the same order as lm.train, as HF-style examples (labels unshifted)."""

        def __len__(self) -> int:
            return cfg.max_steps * cfg.batch_size

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            b = blocks.batch(train_block_ids(np.array([i]), len(blocks), cfg.seed))
            labels = torch.full_like(b["labels"][0], IGNORE_INDEX)
            labels[1:] = b["labels"][0, :-1]  # HF shifts inside the model: label j is the token at position j
            return {"input_ids": b["input_ids"][0], "position_ids": b["position_ids"][0], "labels": labels,
                    "attention_mask": document_causal_mask(b["position_ids"], cfg.attn_implementation)[0]}

    stamps: list[tuple[int, float]] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            stamps.append((state.global_step, time.perf_counter()))

    model = build_model(build_config(cfg.preset, vocab, cfg.model, cfg.attn_implementation), cfg.seed)
    bf16 = cuda and cfg.precision in ("auto", "bf16")
    args = TrainingArguments(
        output_dir=str(Path(job["tmp"]) / "hf" / "out"), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": cfg.min_lr},
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, adam_beta1=cfg.beta1, adam_beta2=cfg.beta2,
        adam_epsilon=cfg.eps, max_grad_norm=cfg.grad_clip, bf16=bf16, use_cpu=not cuda, seed=cfg.seed,
        logging_steps=10**9, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False, torch_compile=cfg.compile,
        optim="adamw_torch_fused" if cuda else "adamw_torch")
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[Stamp()])
    trainer.train()
    return {"tokens_per_s": _throughput(stamps[:-1], job["warmup_steps"], cfg.batch_size * cfg.context_length),
            **_peak_memory_mib(torch.device("cuda" if cuda else "cpu"))}


def worker_score(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from lm.model import UnitVocab, build_config, build_model
    from lm.score import load_lm, score_sequences
    from lm.train import write_model_dir

    cfg = job["config"]
    vocab = UnitVocab(job["vocab_size"])
    out = Path(job["tmp"]) / "score_model"
    write_model_dir(build_model(build_config(cfg["preset"], vocab, cfg.get("model")), 0), vocab, out, {})
    model = load_lm(out)
    rng = np.random.default_rng(0)
    # sWUGGY/sBLIMP-like items: 10-150 deduplicated units
    seqs = [rng.integers(0, vocab.num_units, size=n) for n in rng.integers(10, 150, size=job["score_sequences"])]
    score_sequences(model, seqs[:64], batch_size=job["score_batch_size"])  # warm-up
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    score_sequences(model, seqs, batch_size=job["score_batch_size"])
    seconds = time.perf_counter() - start
    return {"sequences_per_s": len(seqs) / seconds, "mean_units": float(np.mean([len(s) for s in seqs])),
            "batch_size": job["score_batch_size"], **_peak_memory_mib(device)}


def model_flops_per_token(preset: str, vocab_size: int, overrides: dict[str, Any], context: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from lm.model import UnitVocab, build_config, count_parameters

    config = build_config(preset, UnitVocab(vocab_size), overrides)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    non_embedding = count_parameters(model, non_embedding=True)
    head = config.hidden_size * config.vocab_size  # the tied output projection still costs a matmul
    flops = 6 * (non_embedding + head) + 12 * config.num_hidden_layers * config.hidden_size * context
    return {"parameters": count_parameters(model), "non_embedding_parameters": non_embedding,
            "flops_per_token": flops}


def run_worker(kind: str, job: dict[str, Any], threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--job", json.dumps(job)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=None, help="comma-separated (default: tiny,tiny-opt on CPU, "
                        "opt-125m,llama-125m on GPU)")
    parser.add_argument("--context-length", type=int, default=None, help="default 256 on CPU, 1024 on GPU")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 16 CPU, 64 GPU)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="default: batch size / 2")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CPU, 50 GPU)")
    parser.add_argument("--warmup-steps", type=int, default=3,
                        help="untimed first steps (allocation, autotune); at least 1")
    parser.add_argument("--utterances", type=int, default=450, help="synthetic corpus size (450 ~ the demo's 50k "
                        "deduplicated units)")
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile in both trainers")
    parser.add_argument("--cross-document-attention", action="store_true",
                        help="plain causal attention (both trainers) instead of per-utterance masks")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flex_attention"],
                        help="ours only (flex_attention: a BlockMask, GPU only); the HF Trainer keeps the dense mask")
    parser.add_argument("--score-sequences", type=int, default=512)
    parser.add_argument("--score-batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="alternate ours/HF this many times; medians kept")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup_steps < 1:
        parser.error("--warmup-steps must be at least 1")
    if args.worker:
        import transformers  # noqa: F401  (imported before the baseline so that it counts in it)

        import lm.train  # noqa: F401

        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        fn = {"ours": worker_ours, "hf_trainer": worker_hf_trainer, "score": worker_score}[args.worker]
        print(json.dumps({**fn(json.loads(args.job)), "rss_after_imports_mib": baseline}))
        return

    import statistics

    import torch

    from common.io import code_version
    from lm.synthetic import write_markov_units

    cuda = torch.cuda.is_available()
    presets = (args.presets or ("opt-125m,llama-125m" if cuda else "tiny,tiny-opt")).split(",")
    context = args.context_length or (1024 if cuda else 256)
    batch = args.batch_size or (64 if cuda else 16)
    micro = args.micro_batch_size or max(1, batch // 2)
    steps = args.steps or (50 if cuda else 20)
    device_name = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores visible)"
    report: dict[str, Any] = {"device": device_name, "code_version": code_version(), "torch": torch.__version__,
                              "threads": args.threads or os.environ.get("OMP_NUM_THREADS"),
                              "context_length": context, "batch_size": batch, "micro_batch_size": micro,
                              "timed_steps": steps, "compile": args.compile,
                              "cross_document_attention": args.cross_document_attention,
                              "attn_implementation": args.attn_implementation, "presets": {}}
    with tempfile.TemporaryDirectory(prefix="bench_lm_") as tmp:
        units = write_markov_units(Path(tmp) / "units.parquet", num_utterances=args.utterances,
                                   vocab_size=args.vocab_size, seed=0)
        for preset in presets:
            config = {"preset": preset, "context_length": context, "batch_size": batch, "micro_batch_size": micro,
                      "max_steps": args.warmup_steps + steps + 1, "warmup_steps": 2, "log_interval": 10**6,
                      "eval_interval": 10**6, "checkpoint_interval": 10**6, "valid_fraction": 0.05,
                      "compile": args.compile, "cross_document_attention": args.cross_document_attention,
                      "attn_implementation": args.attn_implementation}
            results: dict[str, list[dict[str, Any]]] = {"ours": [], "hf_trainer": []}
            for r in range(args.repeats):
                for kind in ("ours", "hf_trainer") if r % 2 == 0 else ("hf_trainer", "ours"):
                    job = {"config": config, "units": str(units), "tmp": str(Path(tmp) / f"{preset}-{kind}-{r}"),
                           "warmup_steps": args.warmup_steps}
                    results[kind].append(run_worker(kind, job, args.threads))
            entry: dict[str, Any] = {}
            for kind, runs in results.items():
                entry[kind] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                entry[kind]["tokens_per_s_runs"] = [round(run["tokens_per_s"]) for run in runs]
            entry["speedup_vs_hf_trainer"] = entry["ours"]["tokens_per_s"] / entry["hf_trainer"]["tokens_per_s"]
            entry.update(model_flops_per_token(preset, args.vocab_size, {}, context))
            if cuda:
                peak = next((v for k, v in PEAK_BF16.items() if k in device_name), None)
                for kind in ("ours", "hf_trainer"):
                    entry[kind]["mfu"] = (entry["flops_per_token"] * entry[kind]["tokens_per_s"] / peak
                                          if peak else None)
            entry["score"] = run_worker("score", {"config": config, "tmp": str(Path(tmp) / f"{preset}-score"),
                                                  "vocab_size": args.vocab_size,
                                                  "score_sequences": args.score_sequences,
                                                  "score_batch_size": args.score_batch_size}, args.threads)
            report["presets"][preset] = entry
            print(f"bench_lm: {preset}: ours {entry['ours']['tokens_per_s']:.0f} tok/s, HF Trainer "
                  f"{entry['hf_trainer']['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
