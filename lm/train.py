"""Unit-LM training entry point: `python -m lm.train --units U.parquet --workdir W --out MODEL_DIR --config JSON`.

AdamW with linear warmup and cosine decay to a floor, gradient clipping, bf16 autocast on GPU, gradient
accumulation to a global batch that does not depend on the GPU count, DDP under torchrun (NCCL on GPU, gloo on
CPU), JSONL metrics and periodic resumable checkpoints in WORKDIR, and the final Hugging Face model written
atomically and last. Stopping: step budget and/or token budget (these also set the cosine length) and/or
wall-clock budget. Rerunning the same command resumes from WORKDIR; on CPU the resumed run is bit-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from tqdm import tqdm

from common.io import atomic_write_json, provenance
from lm.config import TrainConfig
from lm.data import IGNORE_INDEX, PackedBlocks, prepare_token_arrays, train_block_ids
from lm.model import UnitVocab, build_config, build_model, count_parameters, document_causal_mask
from units.format import read_units_meta

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# Keys that change neither the maths nor the data order: a run may resume after they change.
RESUMABLE_KEYS = ("micro_batch_size", "eval_interval", "eval_blocks", "checkpoint_interval", "log_interval",
                  "compile", "max_time_s")


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then half a cosine from `lr` down to `min_lr` at `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def setup_distributed() -> Dist:
    """Single process, or one process per GPU (or CPU worker) under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """Summed next-token cross-entropy of one micro batch (fp32 logits), targets only where labels are set."""
    position_ids = batch["position_ids"]
    mask = None if cfg.cross_document_attention else document_causal_mask(position_ids, cfg.attn_implementation)
    logits = model(input_ids=batch["input_ids"], position_ids=position_ids, attention_mask=mask,
                   use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def micro_batches(blocks: PackedBlocks, cfg: TrainConfig, step: int,
                  dist: Dist) -> tuple[list[dict[str, torch.Tensor]], int]:
    """This rank's micro batches of step `step` (global sequences [step*B, (step+1)*B) split over ranks, on the
    device) and the number of targets in the whole global batch, known to every rank without communication."""
    global_ids = train_block_ids(np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size), len(blocks), cfg.seed)
    per_rank = cfg.batch_size // dist.world
    ids = global_ids[dist.rank * per_rank:(dist.rank + 1) * per_rank]
    pin = dist.device.type == "cuda"
    batches = [{k: (v.pin_memory() if pin else v).to(dist.device, non_blocking=True)
                for k, v in blocks.batch(chunk).items()}
               for chunk in np.split(ids, per_rank // cfg.micro_batch_size)]
    return batches, blocks.num_targets(global_ids)


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: PackedBlocks, cfg: TrainConfig, dist: Dist, autocast) -> float:
    """Mean per-target cross-entropy over the first `eval_blocks` validation blocks (all ranks together)."""
    was_training = model.training
    model.eval()
    ids = np.arange(min(len(blocks), cfg.eval_blocks))[dist.rank::dist.world]
    total, count = 0.0, 0
    for start in range(0, len(ids), cfg.micro_batch_size):
        batch = {k: v.to(dist.device) for k, v in blocks.batch(ids[start:start + cfg.micro_batch_size]).items()}
        with autocast():
            total += forward_loss(model, batch, cfg).item()
        count += int((batch["labels"] != IGNORE_INDEX).sum())
    model.train(was_training)
    total, count = dist.all_sum([total, float(count)])
    return total / max(count, 1.0)


def _precision_context(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not use_bf16:
        return contextlib.nullcontext, "fp32"
    return (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)), "bf16"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _resume_key(cfg: TrainConfig, data_key: dict[str, Any]) -> str:
    kept = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_KEYS}
    return json.dumps({"config": kept, "units": data_key}, sort_keys=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from, so the log matches the run."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def write_model_dir(model: torch.nn.Module, vocab: UnitVocab, out: Path, info: dict[str, Any]) -> None:
    """save_pretrained + unit vocabulary + provenance, built in a temporary sibling directory and renamed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    vocab.save(tmp)
    atomic_write_json(tmp / "provenance.json", info)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def train(units: str | Path, workdir: str | Path, out: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a unit LM; returns the training summary also written to MODEL_DIR/provenance.json."""
    units, workdir, out = Path(units), Path(workdir), Path(out)
    dist = setup_distributed()
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    units_meta = read_units_meta(units)
    if not units_meta.get("deduplicated", False) and dist.is_main:
        print(f"lm.train: warning: {units} holds non-deduplicated units", file=sys.stderr)
    vocab = UnitVocab(int(units_meta["vocab_size"]))
    if cfg.batch_size % (cfg.micro_batch_size * dist.world):
        raise ValueError(f"config 'batch_size' ({cfg.batch_size}) must be a multiple of micro_batch_size x "
                         f"world size ({cfg.micro_batch_size} x {dist.world})")
    workdir.mkdir(parents=True, exist_ok=True)

    # Rank 0 builds the memory-mapped arrays; the others open them once they exist.
    if dist.is_main:
        arrays, data_stats = prepare_token_arrays(units, workdir / "data", valid_fraction=cfg.valid_fraction,
                                                  seed=cfg.seed)
    dist.barrier()
    if not dist.is_main:
        arrays, data_stats = prepare_token_arrays(units, workdir / "data", valid_fraction=cfg.valid_fraction,
                                                  seed=cfg.seed)
    data_key = json.loads((workdir / "data" / "meta.json").read_text())["key"]
    train_blocks = PackedBlocks(arrays["train"], cfg.context_length, vocab, cfg.cross_document_attention)
    valid_blocks = PackedBlocks(arrays["valid"], cfg.context_length, vocab, cfg.cross_document_attention)
    if len(train_blocks) == 0:
        raise ValueError(f"{units}: not enough training tokens for one block")

    config = build_config(cfg.preset, vocab, cfg.model, cfg.attn_implementation)
    if cfg.context_length > config.max_position_embeddings:
        raise ValueError(f"config 'context_length' ({cfg.context_length}) exceeds the preset's "
                         f"max_position_embeddings ({config.max_position_embeddings})")
    model = build_model(config, cfg.seed).to(dist.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout stream, distinct per rank

    ckpt_path, metrics_path = workdir / CHECKPOINT, workdir / METRICS
    resume_key = _resume_key(cfg, data_key)
    step, tokens_seen, train_time = 0, 0, 0.0
    last_valid: float | None = None
    valid_step = saved_step = -1
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # RNG states must stay on CPU
        if state["resume_key"] == resume_key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, tokens_seen, train_time = state["step"], state["tokens"], state["train_time_s"]
            last_valid, valid_step = state["valid_loss"], state["valid_step"]
            saved_step = step
            if len(state["rng"]) == dist.world:
                _set_rng_state(state["rng"][dist.rank], dist.device)
            if dist.is_main:
                _truncate_metrics(metrics_path, step)
                print(f"lm.train: resumed from {ckpt_path} at step {step}", file=sys.stderr)
        else:
            if dist.is_main:
                print(f"lm.train: {ckpt_path} was written for another config or units file; starting afresh",
                      file=sys.stderr)
    if step == 0 and dist.is_main:
        metrics_path.unlink(missing_ok=True)
    dist.barrier()

    raw_model = model
    if cfg.compile:
        model.compile()
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    autocast, precision = _precision_context(cfg, dist.device)
    total_steps = cfg.total_steps()
    tokens_per_step = cfg.batch_size * cfg.context_length
    accumulation = cfg.batch_size // (cfg.micro_batch_size * dist.world)

    def checkpoint() -> None:
        nonlocal saved_step
        if saved_step == step:
            return
        saved_step = step
        rng = [None] * dist.world
        if dist.world > 1:
            torch_dist.all_gather_object(rng, _rng_state(dist.device))
        else:
            rng = [_rng_state(dist.device)]
        if dist.is_main:
            save_checkpoint(workdir / CHECKPOINT, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "tokens": tokens_seen, "train_time_s": train_time, "valid_loss": last_valid,
                "valid_step": valid_step, "rng": rng, "resume_key": resume_key})

    def out_of_time() -> bool:
        if cfg.max_time_s is None:
            return False
        # rank clocks differ: stop together when any rank is out of time
        return dist.all_sum([float(train_time >= cfg.max_time_s)])[0] > 0

    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not dist.is_main, unit="step", dynamic_ncols=True,
               mininterval=1.0, desc="lm.train")
    window_loss, window_count, window_steps = torch.zeros((), device=dist.device), 0, 0
    window_start = time.perf_counter()
    while step < total_steps and not out_of_time():
        step_start = time.perf_counter()
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches, global_count = micro_batches(train_blocks, cfg, step, dist)
        # Each micro loss is a sum over targets scaled so that the (DDP-averaged) gradient is the mean over every
        # target of the global batch: identical whatever the split into ranks and micro batches.
        scale = dist.world / max(global_count, 1)
        step_loss = torch.zeros((), device=dist.device)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or dist.world == 1
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                loss = forward_loss(model, batch, cfg)
            (loss * scale).backward()
            step_loss += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_loss += step_loss  # a device tensor: no host sync until the next log line
        window_count += global_count
        window_steps += 1
        bar.update(1)

        record: dict[str, Any] = {}
        if step % cfg.log_interval == 0 or step == total_steps:
            if dist.device.type == "cuda":
                torch.cuda.synchronize(dist.device)
            seconds = time.perf_counter() - window_start
            loss_sum = dist.all_sum([float(window_loss)])[0]
            record.update(train_loss=loss_sum / max(window_count, 1), grad_norm=float(grad_norm), lr=lr,
                          tokens_per_s=window_steps * tokens_per_step / seconds)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            window_loss, window_count, window_steps = torch.zeros((), device=dist.device), 0, 0
            window_start = time.perf_counter()
        aux_start = time.perf_counter()  # evaluation and checkpoints do not count in tokens/s
        if len(valid_blocks) and (step % cfg.eval_interval == 0 or step == total_steps):
            last_valid, valid_step = evaluate(raw_model, valid_blocks, cfg, dist, autocast), step
            record["valid_loss"] = last_valid
        if record and dist.is_main:
            elapsed = train_time + time.perf_counter() - step_start
            record = {"step": step, "tokens": tokens_seen, "elapsed_s": round(elapsed, 3), **record}
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if step % cfg.checkpoint_interval == 0:
            checkpoint()
        window_start += time.perf_counter() - aux_start
        train_time += time.perf_counter() - step_start  # the wall-clock budget counts evaluations and checkpoints
    bar.close()

    if len(valid_blocks) and valid_step != step:  # stopped by the clock between evaluations
        last_valid, valid_step = evaluate(raw_model, valid_blocks, cfg, dist, autocast), step
    checkpoint()  # a rerun after the end goes straight to writing the model
    summary = {"steps": step, "tokens": tokens_seen, "train_time_s": round(train_time, 3),
               "valid_loss": last_valid, "world_size": dist.world, "gradient_accumulation": accumulation,
               "precision": precision,
               "stopped_by": "time" if step < total_steps else "budget", "total_steps": total_steps,
               "parameters": count_parameters(raw_model),
               "non_embedding_parameters": count_parameters(raw_model, non_embedding=True)}
    if dist.is_main:
        info = {**provenance(cfg.to_dict()), "units": str(units), "units_meta": units_meta, "data": data_stats,
                "training": summary,
                "conventions": {"document_boundaries": "separator tokens + " + (
                    "plain causal attention" if cfg.cross_document_attention else
                    "no attention across utterances (positions restart per utterance)")}}
        write_model_dir(raw_model, vocab, out, info)
        print(f"lm.train: wrote {out} after {step} steps ({tokens_seen} tokens), valid loss {last_valid}",
              file=sys.stderr)
    dist.barrier()
    if dist.world > 1:
        torch_dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", required=True, help="deduplicated training units (Parquet, units.format)")
    parser.add_argument("--workdir", required=True, help="resume state: data arrays, checkpoint, metrics.jsonl")
    parser.add_argument("--out", required=True, help="final model directory (Hugging Face save_pretrained)")
    parser.add_argument("--config", default="{}", help="JSON object of hyperparameters (see TrainConfig)")
    args = parser.parse_args(argv)
    try:
        raw = json.loads(args.config)
    except json.JSONDecodeError as err:
        parser.error(f"--config is not valid JSON: {err}")
    if not isinstance(raw, dict):
        parser.error("--config must be a JSON object")
    train(args.units, args.workdir, args.out, TrainConfig.from_dict(raw))


if __name__ == "__main__":
    from common.cli import run

    run(main)
