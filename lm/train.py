"""Unit-LM training entry point: `python -m lm.train --units U.parquet --workdir W --out MODEL_DIR --config JSON`.

`--data DATA_DIR` instead of `--units` trains on arrays packed beforehand by `python -m lm.pack` (the workflow's
`pack_lm_data` job), so that no GPU waits on packing.

AdamW with linear warmup and cosine decay to a floor, gradient clipping, bf16 autocast on GPU, gradient
accumulation to a global batch that does not depend on the GPU count, DDP under torchrun (NCCL on GPU, gloo on
CPU), JSONL metrics, validation and resumable checkpoints every N steps and/or M minutes, and the final Hugging Face
model written atomically and last. Stopping: step, token and/or epoch budgets (the smallest wins; it also sets the
cosine length) and/or a wall-clock budget. Rerunning the same command resumes from WORKDIR; on CPU the resumed run
is bit-identical.

Layout: WORKDIR/checkpoint.pt is the last resumable state; WORKDIR/best-stepNNNNNNNN/ the model of the lowest
validation loss so far. MODEL_DIR (the declared output) holds the best model at its top level (what
`AutoModelForCausalLM.from_pretrained` and `lm.score` read) and the final weights in MODEL_DIR/last/; without
validation data the top level is the final model too.

Stopping early (common/runtime.py): a NaN/Inf loss or gradient stops with exit code 3, nothing saved after the last
good checkpoint, and prints the command that continues from it with a lower learning rate in a new work directory
(`--init-from OLD_WORKDIR_OR_CHECKPOINT`: the new run records the origin and the changed keys). SIGTERM / SIGUSR1
(a SLURM time limit) and `--stop-after-seconds` finish the current step, write a resumable checkpoint and exit
with code 75.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.config import ConfigError
from common.io import atomic_write, atomic_write_json, provenance
from common.runtime import (
    Dist,
    FiniteGuard,
    MetricsLog,
    Precision,
    StopSignals,
    TrainingDiverged,
    choose_precision,
    config_changes,
    exit_codes,
    gather_rng_states,
    init_record,
    interrupted,
    load_checkpoint,
    restore_rng_states,
    retry_command,
    retry_workdir,
    save_checkpoint,
    setup_distributed,
    teardown,
)
from lm.config import TrainConfig
from lm.data import IGNORE_INDEX, PackedBlocks, open_token_arrays, prepare_token_arrays, train_block_ids
from lm.model import UnitVocab, build_config, build_model, count_parameters, document_attention_mask
from units.format import read_units_meta

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# Keys that change neither the maths nor the data order: a run may resume after they change.
RESUMABLE_KEYS = ("micro_batch_size", "eval_interval", "eval_minutes", "eval_blocks", "checkpoint_interval",
                  "checkpoint_minutes", "log_interval", "compile", "max_time_s")
BEST_PREFIX = "best-step"
LAST = "last"
DIVERGED_ADVICE = "Try a lower lr (and min_lr), a smaller grad_clip or precision fp32."


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then half a cosine from `lr` down to `min_lr` at `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """Summed next-token cross-entropy of one micro batch (fp32 logits), targets only where labels are set."""
    position_ids = batch["position_ids"]
    mask = None if cfg.cross_document_attention else document_attention_mask(position_ids, cfg.attn_implementation)
    logits = model(input_ids=batch["input_ids"], position_ids=position_ids, attention_mask=mask,
                   use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


class Interval:
    """Due every `steps` optimizer steps and/or every `minutes` since it last fired (rank 0's clock decides)."""

    def __init__(self, steps: int | None, minutes: float | None, clock: Any = time.monotonic) -> None:
        self.steps, self.minutes, self.clock = steps, minutes, clock
        self.since = clock()

    def by_steps(self, step: int) -> bool:
        return self.steps is not None and step % self.steps == 0

    def by_clock(self, dist: Dist) -> bool:
        """Rank 0's verdict on every rank: ranks' clocks differ, and all must evaluate or checkpoint together."""
        if self.minutes is None:
            return False
        late = dist.is_main and self.clock() - self.since >= 60.0 * self.minutes
        return dist.any(late)[0]  # only rank 0 can be true: the OR is its flag

    def done(self) -> None:
        self.since = self.clock()


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
def evaluate(model: torch.nn.Module, blocks: PackedBlocks, cfg: TrainConfig, dist: Dist,
             precision: Precision) -> float:
    """Mean per-target cross-entropy over the first `eval_blocks` validation blocks (all ranks together)."""
    was_training = model.training
    model.eval()
    ids = np.arange(min(len(blocks), cfg.eval_blocks))[dist.rank::dist.world]
    total, count = 0.0, 0
    for start in range(0, len(ids), cfg.micro_batch_size):
        batch = {k: v.to(dist.device) for k, v in blocks.batch(ids[start:start + cfg.micro_batch_size]).items()}
        with precision.autocast():
            total += forward_loss(model, batch, cfg).item()
        count += int((batch["labels"] != IGNORE_INDEX).sum())
    model.train(was_training)
    total, count = dist.all_sum([total, float(count)])
    return total / max(count, 1.0)


def _resume_key(cfg: TrainConfig, data_key: dict[str, Any]) -> str:
    kept = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_KEYS}
    return json.dumps({"config": kept, "units": data_key}, sort_keys=True)


def origin_checkpoint(init_from: str | Path) -> Path:
    """The checkpoint `--init-from` names: a work directory's checkpoint.pt, or a checkpoint file."""
    path = Path(init_from)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"--init-from {init_from}: no {CHECKPOINT} there (a work directory of lm.train, or "
                                "its checkpoint file)")
    return path


def origin_changes(state: dict[str, Any], cfg: TrainConfig, data_key: dict[str, Any]) -> dict[str, list[Any]]:
    """The config keys (and units) that differ between an --init-from checkpoint and this run."""
    old_key = json.loads(state["resume_key"])
    changes = config_changes(state.get("config", old_key["config"]), cfg.to_dict())
    if old_key["units"] != data_key:
        changes["units"] = [old_key["units"], data_key]
    return changes


def write_model_dir(model: torch.nn.Module, vocab: UnitVocab, out: Path, info: dict[str, Any], *,
                    best: Path | None = None) -> None:
    """OUT = the `best` model directory (or `model` when None) + provenance, OUT/last = `model`; each a
    save_pretrained directory with the unit vocabulary, built in a temporary sibling directory and renamed."""
    with atomic_write(out) as tmp:
        if best is None:
            model.save_pretrained(tmp)
        else:
            shutil.copytree(best, tmp)
        vocab.save(tmp)
        model.save_pretrained(tmp / LAST)
        vocab.save(tmp / LAST)
        atomic_write_json(tmp / "provenance.json", info)
        if out.exists():  # a directory cannot be replaced by a rename unless it is empty
            shutil.rmtree(out)


def best_dir(workdir: Path, step: int) -> Path:
    return workdir / f"{BEST_PREFIX}{step:08d}"


def prune_best(workdir: Path, keep: set[int | None]) -> None:
    """Delete the best-model directories of WORKDIR other than those of the steps in `keep`."""
    for path in workdir.glob(f"{BEST_PREFIX}*"):
        if path.is_dir() and path.name[len(BEST_PREFIX):].isdigit() and int(path.name[len(BEST_PREFIX):]) not in keep:
            shutil.rmtree(path, ignore_errors=True)


def train(units: str | Path, workdir: str | Path, out: str | Path, cfg: TrainConfig, *,
          init_from: str | Path | None = None, stop_after_s: float | None = None) -> dict[str, Any]:
    """Train (or resume) a unit LM; returns the training summary also written to MODEL_DIR/provenance.json.

    `init_from` (a work directory or checkpoint of another run) starts an empty WORKDIR from that checkpoint's
    weights, optimizer, RNG and step, with this config; ignored once WORKDIR holds its own checkpoint.
    """
    units, workdir, out = Path(units), Path(workdir), Path(out)
    dist = setup_distributed()
    with StopSignals(stop_after_s=stop_after_s) as signals:
        summary = _train(units, workdir, out, cfg, dist, signals, init_from)
    if dist.world > 1:
        teardown()
    return summary


def _open_data(units: Path, workdir: Path, cfg: TrainConfig, dist: Dist) -> tuple[dict, dict[str, Any]]:
    """The token arrays and meta.json of `units`: a folder packed by `lm.pack`, or a units file packed here."""
    if units.is_dir():
        return open_token_arrays(units, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    data_dir = workdir / "data"
    # Rank 0 builds the memory-mapped arrays; the others open them once they exist.
    if dist.is_main:
        prepare_token_arrays(units, data_dir, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    dist.barrier()
    return open_token_arrays(data_dir, valid_fraction=cfg.valid_fraction, seed=cfg.seed)


def _train(units: Path, workdir: Path, out: Path, cfg: TrainConfig, dist: Dist, signals: StopSignals,
           init_from: str | Path | None) -> dict[str, Any]:
    if cfg.batch_size % (cfg.micro_batch_size * dist.world):
        raise ConfigError(f"'batch_size' ({cfg.batch_size}) must be a multiple of micro_batch_size x "
                          f"world size ({cfg.micro_batch_size} x {dist.world})")
    workdir.mkdir(parents=True, exist_ok=True)
    arrays, data_meta = _open_data(units, workdir, cfg, dist)
    data_stats = data_meta["stats"]
    units_meta = data_meta.get("units_meta") or read_units_meta(units)
    if not units_meta.get("deduplicated", False) and dist.is_main:
        print(f"lm.train: warning: {units} holds non-deduplicated units", file=sys.stderr)
    vocab = UnitVocab(int(data_meta["key"]["vocab_size"]))
    data_key = data_meta["key"]
    train_blocks = PackedBlocks(arrays["train"], cfg.context_length, vocab, cfg.cross_document_attention)
    valid_blocks = PackedBlocks(arrays["valid"], cfg.context_length, vocab, cfg.cross_document_attention)
    if len(train_blocks) == 0:
        raise ValueError(f"{units}: not enough training tokens for one block")

    config = build_config(cfg.preset, vocab, cfg.model, cfg.attn_implementation)
    if cfg.context_length > config.max_position_embeddings:
        raise ConfigError(f"'context_length' ({cfg.context_length}) exceeds the preset's "
                          f"max_position_embeddings ({config.max_position_embeddings})")
    model = build_model(config, cfg.seed).to(dist.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout stream, distinct per rank

    # Where to start: WORKDIR's own checkpoint (a resume), else --init-from's (a new run from another), else step 0.
    ckpt_path = workdir / CHECKPOINT
    resume_key = _resume_key(cfg, data_key)
    state, origin = None, None
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["resume_key"] != resume_key:
            state = None
            if dist.is_main:
                print(f"lm.train: {ckpt_path} was written for another config or units file; starting afresh",
                      file=sys.stderr)
        elif init_from is not None and dist.is_main:
            print(f"lm.train: {workdir} already holds a checkpoint: resuming it, not --init-from", file=sys.stderr)
    if state is None and init_from is not None:
        origin = origin_checkpoint(init_from)
        state = load_checkpoint(origin)
    step, tokens_seen, train_time = 0, 0, 0.0
    last_valid: float | None = None
    valid_step = saved_step = -1
    best_valid: float | None = None  # the lowest validation loss so far, at best_step (its model: best_dir)
    best_step: int | None = None
    last_good = None  # the newest checkpoint known to be finite: what a diverged run can continue from
    init_info = None  # where this run (or the run it resumes) came from, with --init-from
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ConfigError(f"--init-from {origin}: its model does not fit this config ({str(err).splitlines()[0]}"
                              f"); changed keys: {sorted(origin_changes(state, cfg, data_key))}") from None
        optimizer.load_state_dict(state["optimizer"])
        for group, weight_decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0), strict=True):
            # load_state_dict restores the saved values; --init-from may have changed them (a resume cannot)
            group.update(weight_decay=weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        step, tokens_seen, train_time = state["step"], state["tokens"], state["train_time_s"]
        last_valid, valid_step = state["valid_loss"], state["valid_step"]
        restore_rng_states(state["rng"], dist)
        init_info = state.get("init_from")
        last_good = origin or ckpt_path
        if origin is None:
            saved_step = step
            best_valid, best_step = state.get("best_valid"), state.get("best_step")
            # rank 0's view of the file system, on every rank (they must agree on what counts as an improvement)
            if dist.any(dist.is_main and best_step is not None and not best_dir(workdir, best_step).is_dir())[0]:
                if dist.is_main:
                    print(f"lm.train: {best_dir(workdir, best_step)} is missing: the best model is chosen afresh",
                          file=sys.stderr)
                best_valid, best_step = None, None
        else:
            init_info = init_record(origin, state, origin_changes(state, cfg, data_key))
        if dist.is_main:
            print(f"lm.train: {'resumed' if origin is None else 'initialised'} from {last_good} at step {step}",
                  file=sys.stderr)
    if dist.is_main:  # best models newer than the checkpoint (a crash) or of another run are not ours
        prune_best(workdir, {best_step})
    saved_best = best_step  # the best model that WORKDIR's checkpoint refers to
    metrics = MetricsLog(workdir / METRICS, step, dist.is_main)
    if origin is not None:
        metrics.write({"step": step, "event": "init_from", **init_info})
    dist.barrier()

    raw_model = model
    if cfg.compile:
        model.compile()
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    precision = choose_precision(cfg.precision, dist.device)
    budgets = cfg.budgets(len(train_blocks))
    total_steps = min(budgets.values())
    tokens_per_step = cfg.batch_size * cfg.context_length
    accumulation = cfg.batch_size // (cfg.micro_batch_size * dist.world)
    guard = FiniteGuard(dist.device, step)

    eval_timer = Interval(cfg.eval_interval, cfg.eval_minutes)
    checkpoint_timer = Interval(cfg.checkpoint_interval, cfg.checkpoint_minutes)

    def checkpoint() -> None:
        """Save WORKDIR's resumable state (once per step; never after a NaN/Inf)."""
        nonlocal saved_step, last_good, saved_best
        checkpoint_timer.done()
        if saved_step == step:
            return
        guard.check(step, dist, last_good, DIVERGED_ADVICE)
        saved_step = step
        rng = gather_rng_states(dist)
        if dist.is_main:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "tokens": tokens_seen, "train_time_s": train_time, "valid_loss": last_valid,
                "valid_step": valid_step, "best_valid": best_valid, "best_step": best_step, "rng": rng,
                "resume_key": resume_key, "config": cfg.to_dict(), "init_from": init_info}, ckpt_path)
            prune_best(workdir, {best_step})
        saved_best = best_step
        last_good = ckpt_path

    def validate() -> bool:
        """Evaluate at this step; a new lowest loss saves the model as WORKDIR's best. True when it did."""
        nonlocal last_valid, valid_step, best_valid, best_step
        eval_timer.done()
        last_valid, valid_step = evaluate(raw_model, valid_blocks, cfg, dist, precision), step
        if best_valid is not None and not last_valid < best_valid:
            return False
        guard.check(step, dist, last_good, DIVERGED_ADVICE)  # never keep weights after a NaN/Inf
        best_valid, best_step = last_valid, step
        if dist.is_main:
            with atomic_write(best_dir(workdir, step)) as tmp:
                raw_model.save_pretrained(tmp)
                vocab.save(tmp)
            prune_best(workdir, {saved_best, best_step})  # the checkpoint's best stays until the next checkpoint
        return True

    def stop_if_requested() -> None:
        """At a step boundary: on SIGTERM / SIGUSR1 (any rank), checkpoint and raise TrainingInterrupted."""
        if dist.any(signals.requested() is not None)[0]:
            checkpoint()
            raise interrupted(signals.requested() or "a stop requested on another rank", step, ckpt_path)

    def out_of_time() -> bool:
        # rank clocks differ: stop together when any rank is out of time
        return cfg.max_time_s is not None and dist.any(train_time >= cfg.max_time_s)[0]

    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not dist.is_main, unit="step", dynamic_ncols=True,
               mininterval=1.0, desc="lm.train")
    window_loss, window_count, window_steps = torch.zeros((), device=dist.device), 0, 0
    window_start = time.perf_counter()
    try:
        while step < total_steps:
            stop_if_requested()
            if out_of_time():
                break
            step_start = time.perf_counter()
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches, global_count = micro_batches(train_blocks, cfg, step, dist)
            # Each micro loss is a sum over targets scaled so that the (DDP-averaged) gradient is the mean over
            # every target of the global batch: identical whatever the split into ranks and micro batches.
            scale = dist.world / max(global_count, 1)
            step_loss = torch.zeros((), device=dist.device)
            for i, batch in enumerate(batches):
                sync = i == len(batches) - 1 or dist.world == 1
                with (contextlib.nullcontext() if sync else model.no_sync()), precision.autocast():
                    loss = forward_loss(model, batch, cfg)
                (loss * scale).backward()
                step_loss += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            guard.update(step_loss, grad_norm)  # on the device: checked when logging and before any save
            step += 1
            tokens_seen += tokens_per_step
            window_loss += step_loss  # a device tensor: no host sync until the next log line
            window_count += global_count
            window_steps += 1
            bar.update(1)

            record: dict[str, Any] = {}
            if step % cfg.log_interval == 0 or step == total_steps:
                guard.check(step, dist, last_good, DIVERGED_ADVICE)
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
            # Every rank takes the same decisions: steps are shared, and a clock verdict is rank 0's.
            if (eval_timer.by_clock(dist) or eval_timer.by_steps(step) or step == total_steps) and len(valid_blocks):
                if validate():
                    record["best"] = True
                record["valid_loss"] = last_valid
            if record:
                elapsed = train_time + time.perf_counter() - step_start
                metrics.write({"step": step, "tokens": tokens_seen, "elapsed_s": round(elapsed, 3), **record})
            if checkpoint_timer.by_clock(dist) or checkpoint_timer.by_steps(step):
                checkpoint()
            window_start += time.perf_counter() - aux_start
            train_time += time.perf_counter() - step_start  # the wall-clock budget counts evaluations, checkpoints
    finally:
        bar.close()

    if len(valid_blocks) and valid_step != step:  # stopped by the clock between evaluations
        validate()
    stop_if_requested()  # a stop signal never lets the final model appear
    checkpoint()  # a rerun after the end goes straight to writing the model
    summary = {"steps": step, "tokens": tokens_seen, "train_time_s": round(train_time, 3),
               "valid_loss": last_valid, "world_size": dist.world, "gradient_accumulation": accumulation,
               "precision": precision.name,
               "stopped_by": "time" if step < total_steps else "budget", "total_steps": total_steps,
               "budgets": budgets, "train_blocks": len(train_blocks),
               "epochs": step * cfg.batch_size / len(train_blocks),  # passes over the training blocks
               "best_step": best_step, "best_valid_loss": best_valid,
               "parameters": count_parameters(raw_model),
               "non_embedding_parameters": count_parameters(raw_model, non_embedding=True)}
    if dist.is_main:
        info = {**provenance(cfg.to_dict()), "units": str(units), "units_meta": units_meta, "data": data_stats,
                "training": summary, "init_from": init_info,
                "conventions": {"document_boundaries": "separator tokens + " + (
                    "plain causal attention" if cfg.cross_document_attention else
                    "no attention across utterances (positions restart per utterance)"),
                    "model": (f"top level: the best model (lowest validation loss, step {best_step}); {LAST}/: the "
                              f"final model (step {step})") if best_step is not None else
                    f"top level and {LAST}/: the final model (step {step}; no best model: no validation data, or "
                    "its directory in the work directory was deleted)"}}
        write_model_dir(raw_model, vocab, out, info, best=None if best_step is None else best_dir(workdir, best_step))
        print(f"lm.train: wrote {out} after {step} steps ({tokens_seen} tokens), valid loss {last_valid}, best "
              f"{best_valid} at step {best_step}", file=sys.stderr)
    dist.barrier()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", "--data", dest="units", required=True,
                        help="deduplicated training units (Parquet, packed into WORKDIR/data first) or a folder "
                             "already packed by `python -m lm.pack` (what the workflow passes)")
    parser.add_argument("--workdir", required=True, help="resume state: data arrays, checkpoint, metrics.jsonl")
    parser.add_argument("--out", required=True, help="final model directory (Hugging Face save_pretrained)")
    parser.add_argument("--config", default="{}", help="JSON object of hyperparameters (see lm/config.py)")
    parser.add_argument("--init-from", default=None, metavar="WORKDIR_OR_CHECKPOINT",
                        help="start an empty --workdir from another run's checkpoint, with this --config")
    parser.add_argument("--stop-after-seconds", type=float, default=None, metavar="SECONDS",
                        help="after this wall-clock time, checkpoint at the next step and exit 75 (to resume)")
    args = parser.parse_args(argv)
    try:
        raw = json.loads(args.config)
    except json.JSONDecodeError as err:
        parser.error(f"--config is not valid JSON: {err}")
    if not isinstance(raw, dict):
        parser.error("--config must be a JSON object")
    cfg = TrainConfig.from_dict(raw)
    with exit_codes():
        try:
            train(args.units, args.workdir, args.out, cfg, init_from=args.init_from,
                  stop_after_s=args.stop_after_seconds)
        except TrainingDiverged as err:
            changes = {"lr": cfg.lr / 2, "min_lr": cfg.min_lr / 2}
            command = retry_command("lm.train", [("--units", args.units), ("--out", args.out)], raw, changes,
                                    retry_workdir(args.workdir, changes["lr"]), err.last_checkpoint)
            start = "continue from it" if err.last_checkpoint else "start again"
            raise TrainingDiverged(f"{err}\nTo {start} with half the learning rate in a new work directory:\n"
                                   f"  {command}", step=err.step, last_checkpoint=err.last_checkpoint) from None


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
