"""Unit-LM training: `python -m lm.train --data DATA_DIR --workdir W --out MODEL_DIR --config JSON`.

`--data` is a folder packed by `python -m lm.pack` (the workflow's `pack_lm_data` job, so no GPU waits on packing)
or a units file, packed first into the sibling folder W.data. AdamW with linear warmup and cosine decay to a floor,
gradient clipping, bf16 autocast on GPU, gradient accumulation to a global batch that does not depend on the GPU
count, DDP under torchrun (NCCL on GPU, gloo on CPU). Step, token and/or epoch budgets (the smallest wins and sets
the cosine length), and a wall-clock budget. Validation and resumable checkpoints every N steps and/or M minutes.

Same skeleton as spidr/train.py: build (data, model, optimiser) -> `common.runtime.Workdir.start` (the one resume
policy: resume, set aside, or `--init-from`) -> the loop of `train_step` -> periodic validation / checkpoint ->
the final model written last. Stopping early and exit codes: common/runtime.py.

MODEL_DIR (the declared output) holds the model of the lowest validation loss at its top level (what
`AutoModelForCausalLM.from_pretrained` and `lm.score` read) and the final weights in MODEL_DIR/last/; without
validation data the top level is the final model too. On CPU a resumed run is bit-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.config import ConfigError, loads
from common.io import atomic_write, atomic_write_json, provenance
from common.runtime import (
    Dist,
    FiniteGuard,
    MetricsLog,
    Precision,
    StopSignals,
    TrainingDiverged,
    Workdir,
    choose_precision,
    gather_rng_states,
    interrupted,
    reapply_optimizer_settings,
    restore_rng_states,
    retry_advice,
    setup_distributed,
    teardown,
)
from lm.config import MANY_EPOCHS, TrainConfig
from lm.data import IGNORE_INDEX, LMDataError, PackedBlocks, open_token_arrays, prepare_token_arrays, train_block_ids
from lm.model import UnitVocab, build_config, build_model, count_parameters, document_attention_mask
from units.format import read_units_meta

# Keys that change neither the maths nor the data order: a run resumes after they change (they are not part of
# the work directory's identity).
RESUMABLE_KEYS = ("micro_batch_size", "eval_interval", "eval_minutes", "eval_blocks", "checkpoint_interval",
                  "checkpoint_minutes", "log_interval", "compile", "max_time_s", "skip_nonfinite_steps")
BEST_PREFIX = "best-step"
LAST = "last"
DIVERGED_ADVICE = "Try a lower lr (and min_lr), a smaller grad_clip or precision fp32."
MEMORY_HINT = ("lower micro_batch_size (the global batch_size stays, through gradient accumulation), context_length, "
               "or eval_blocks; or use more GPUs")


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

    def due(self, step: int, dist: Dist) -> bool:
        return self.by_clock(dist) or self.by_steps(step)  # the clock first: its collective runs every step

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


class BestModel:
    """The model of the lowest validation loss so far, as WORKDIR/best-stepNNNNNNNN/ (save_pretrained + vocabulary).

    The newest checkpoint names one best model (`saved_step`); a newer best may exist beside it until the next
    checkpoint, so that a crash in between resumes to the pair the checkpoint knows. Rank 0 writes and deletes;
    every rank keeps the numbers (they must agree on what counts as an improvement).
    """

    def __init__(self, workdir: Path, is_main: bool) -> None:
        self.workdir, self.is_main = workdir, is_main
        self.step: int | None = None
        self.loss: float | None = None
        self.saved_step: int | None = None

    def path(self, step: int) -> Path:
        return self.workdir / f"{BEST_PREFIX}{step:08d}"

    def restore(self, step: int | None, loss: float | None, dist: Dist) -> None:
        """The best model a resumed checkpoint names; forgotten (chosen afresh) when its directory is gone."""
        missing = dist.any(dist.is_main and step is not None and not self.path(step).is_dir())[0]
        if missing and dist.is_main:
            print(f"lm.train: {self.path(step)} is missing: the best model is chosen afresh", file=sys.stderr)
        self.step, self.loss = (None, None) if missing else (step, loss)
        self.checkpointed()

    def offer(self, step: int, loss: float, write: Callable[[Path], None]) -> bool:
        """Keep the model (`write` saves it into a folder) if `loss` is the lowest so far; True when it is."""
        if self.loss is not None and not loss < self.loss:
            return False
        self.step, self.loss = step, loss
        if self.is_main:
            with atomic_write(self.path(step)) as tmp:
                write(tmp)
        self._prune({self.saved_step, step})
        return True

    def checkpointed(self) -> None:
        """A checkpoint now names the current best model: the others go."""
        self.saved_step = self.step
        self._prune({self.step})

    def _prune(self, keep: set[int | None]) -> None:
        if not self.is_main:
            return
        for path in self.workdir.glob(f"{BEST_PREFIX}*"):
            number = path.name[len(BEST_PREFIX):]
            if path.is_dir() and number.isdigit() and int(number) not in keep:
                shutil.rmtree(path, ignore_errors=True)


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


class LMTrainer:
    """One training run: built by `__init__` (data, model, optimiser), started by `load`, run by `fit`."""

    def __init__(self, cfg: TrainConfig, units: Path, workdir: Path, dist: Dist) -> None:
        self.cfg, self.units, self.dist = cfg, units, dist
        if cfg.batch_size % (cfg.micro_batch_size * dist.world):
            raise ConfigError(f"'batch_size' ({cfg.batch_size}) must be a multiple of micro_batch_size x "
                              f"world size ({cfg.micro_batch_size} x {dist.world})")
        self._setup_data(units, workdir)
        self._setup_model()
        self._setup_optimizer()
        self.precision = choose_precision(cfg.precision, dist.device)
        self.total_steps = min(self.budgets.values())
        self.step, self.tokens, self.train_time = 0, 0, 0.0
        self.valid_loss: float | None = None
        self.valid_step = -1
        self.best = BestModel(workdir, dist.is_main)
        self.eval_timer = Interval(cfg.eval_interval, cfg.eval_minutes)
        self.checkpoint_timer = Interval(cfg.checkpoint_interval, cfg.checkpoint_minutes)

    @property
    def identity(self) -> dict[str, Any]:
        """What a work directory must match to be resumed: the weight-changing config and the packed data."""
        return {"recipe": {k: v for k, v in self.cfg.to_dict().items() if k not in RESUMABLE_KEYS},
                "data": self.data_meta["key"]}

    def _setup_data(self, units: Path, workdir: Path) -> None:
        cfg, dist = self.cfg, self.dist
        if units.is_dir():
            arrays, self.data_meta = open_token_arrays(units, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
        else:  # a units file: rank 0 packs it beside the work directory, the others open it once it exists
            packed = workdir.with_name(workdir.name + ".data")
            if dist.is_main:
                prepare_token_arrays(units, packed, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
            dist.barrier()
            arrays, self.data_meta = open_token_arrays(packed, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
        self.units_meta = self.data_meta.get("units_meta") or read_units_meta(units)
        if not self.units_meta.get("deduplicated", False) and dist.is_main:
            print(f"lm.train: warning: {units} holds non-deduplicated units", file=sys.stderr)
        self.vocab = UnitVocab(int(self.data_meta["key"]["vocab_size"]))
        self.train_blocks = PackedBlocks(arrays["train"], cfg.context_length, self.vocab, cfg.cross_document_attention)
        self.valid_blocks = PackedBlocks(arrays["valid"], cfg.context_length, self.vocab, cfg.cross_document_attention)
        if len(self.train_blocks) == 0:
            raise LMDataError(f"{units}: not enough training tokens for one block of {cfg.context_length}")
        self.budgets = cfg.budgets(len(self.train_blocks))

    def _setup_model(self) -> None:
        cfg = self.cfg
        config = build_config(cfg.preset, self.vocab, cfg.model, cfg.attn_implementation)
        if cfg.context_length > config.max_position_embeddings:
            raise ConfigError(f"'context_length' ({cfg.context_length}) exceeds the preset's "
                              f"max_position_embeddings ({config.max_position_embeddings})")
        self.raw_model = build_model(config, cfg.seed).to(self.dist.device)
        self.model = self.raw_model  # compiled and wrapped in DDP by `load`, after the weights are in

    def _setup_optimizer(self) -> None:
        cfg, params = self.cfg, list(self.raw_model.parameters())
        self.optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                                             "weight_decay": cfg.weight_decay},
                                            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                           lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)

    def load(self, state: dict[str, Any] | None, run: Workdir) -> None:
        """Start from `state` (a resumed or --init-from checkpoint; None: step 0), then compile / wrap the model."""
        dist = self.dist
        torch.manual_seed(self.cfg.seed + 1 + dist.rank)  # dropout stream, distinct per rank
        if state is not None:
            try:
                self.raw_model.load_state_dict(state["model"])
            except RuntimeError as err:
                raise ConfigError(f"--init-from {run.origin}: its model does not fit this config "
                                  f"({str(err).splitlines()[0]}); changed keys: "
                                  f"{sorted((run.init_from or {}).get('changed', {}))}") from None
            reapply_optimizer_settings(self.optimizer, state["optimizer"])
            self.step, self.tokens, self.train_time = state["step"], state["tokens"], state["train_time_s"]
            self.valid_loss, self.valid_step = state["valid_loss"], state["valid_step"]
            restore_rng_states(state["rng"], dist)
        if run.resumed_from is not None:  # --init-from's best models are in another work directory
            self.best.restore(state["best_step"], state["best_valid"], dist)
        else:
            self.best.checkpointed()  # nothing of ours yet: leftovers of a crash go
        self.metrics = MetricsLog(run.path / "metrics.jsonl", self.step, dist.is_main)
        if run.origin is not None:
            self.metrics.write({"step": self.step, "event": "init_from", **run.init_from})
        skip = self.cfg.skip_nonfinite_steps if self.precision.name == "bf16" else 0
        self.guard = FiniteGuard(dist.device, self.step, skip_limit=skip)
        if self.cfg.compile:
            self.model.compile()
        if dist.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        dist.barrier()

    def train_step(self) -> tuple[torch.Tensor, int, torch.Tensor]:
        """One optimiser step over this rank's micro batches; returns (summed loss, global targets, grad norm)."""
        cfg, dist = self.cfg, self.dist
        self.lr = lr_at(self.step, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        batches, global_count = micro_batches(self.train_blocks, cfg, self.step, dist)
        # Each micro loss is a sum over targets scaled so that the (DDP-averaged) gradient is the mean over every
        # target of the global batch: identical whatever the split into ranks and micro batches.
        scale = dist.world / max(global_count, 1)
        step_loss = torch.zeros((), device=dist.device)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or dist.world == 1
            with (contextlib.nullcontext() if sync else self.model.no_sync()), self.precision.autocast():
                loss = forward_loss(self.model, batch, cfg)
            (loss * scale).backward()
            step_loss += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        if self.guard.allow_step(step_loss, grad_norm):
            self.optimizer.step()
        else:
            step_loss.zero_()  # a skipped step adds nothing to the logged loss
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += cfg.batch_size * cfg.context_length
        return step_loss, global_count, grad_norm

    def fit(self, run: Workdir, signals: StopSignals) -> None:
        """Train to the end of the budget (or the wall-clock budget); validate, log and checkpoint on the way."""
        cfg, dist = self.cfg, self.dist
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not dist.is_main, unit="step",
                   dynamic_ncols=True, mininterval=1.0, desc="lm.train")
        window_loss, window_count, window_steps = torch.zeros((), device=dist.device), 0, 0
        window_start = time.perf_counter()
        while self.step < self.total_steps:
            self.stop_if_requested(run, signals)
            # rank clocks differ: stop together when any rank is out of time
            if cfg.max_time_s is not None and dist.any(self.train_time >= cfg.max_time_s)[0]:
                break
            step_start = time.perf_counter()
            loss, count, grad_norm = self.train_step()
            window_loss += loss  # a device tensor: no host sync until the next log line
            window_count, window_steps = window_count + count, window_steps + 1
            bar.update(1)
            record: dict[str, Any] = {}
            if self.step % cfg.log_interval == 0 or self.step == self.total_steps:
                self.guard.check(self.step, dist, run.last_good(), DIVERGED_ADVICE)
                if dist.device.type == "cuda":
                    torch.cuda.synchronize(dist.device)
                seconds = time.perf_counter() - window_start
                record = {"train_loss": dist.all_sum([float(window_loss)])[0] / max(window_count, 1),
                          "grad_norm": float(grad_norm), "lr": self.lr, "skipped_steps": self.guard.take_skipped(),
                          "tokens_per_s": window_steps * cfg.batch_size * cfg.context_length / seconds}
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{self.lr:.2e}",
                                tok_s=f"{record['tokens_per_s']:.0f}")
                window_loss, window_count, window_steps = torch.zeros((), device=dist.device), 0, 0
                window_start = time.perf_counter()
            aux_start = time.perf_counter()  # evaluation and checkpoints do not count in tokens/s
            if (self.eval_timer.due(self.step, dist) or self.step == self.total_steps) and len(self.valid_blocks):
                record.update(self.validate(run))
            if record:
                elapsed = self.train_time + time.perf_counter() - step_start
                self.metrics.write({"step": self.step, "tokens": self.tokens, "elapsed_s": round(elapsed, 3),
                                    **record})
            if self.checkpoint_timer.due(self.step, dist):
                self.save(run)
            window_start += time.perf_counter() - aux_start
            self.train_time += time.perf_counter() - step_start  # the wall-clock budget counts evaluations too
        bar.close()
        if len(self.valid_blocks) and self.valid_step != self.step:  # stopped by the clock between evaluations
            self.validate(run)
        self.stop_if_requested(run, signals)  # a stop signal never lets the final model appear
        self.save(run)

    def validate(self, run: Workdir) -> dict[str, Any]:
        """Evaluate now; a new lowest loss becomes the best model (never after a NaN/Inf). Returns the log fields."""
        self.eval_timer.done()
        self.valid_loss, self.valid_step = evaluate(self.raw_model, self.valid_blocks, self.cfg, self.dist,
                                                    self.precision), self.step
        if self.best.loss is not None and not self.valid_loss < self.best.loss:
            return {"valid_loss": self.valid_loss}
        self.guard.check(self.step, self.dist, run.last_good(), DIVERGED_ADVICE)

        def write(folder: Path) -> None:
            self.raw_model.save_pretrained(folder)
            self.vocab.save(folder)

        self.best.offer(self.step, self.valid_loss, write)
        return {"valid_loss": self.valid_loss, "best": True}

    def save(self, run: Workdir) -> Path:
        """WORKDIR's resumable state at this step (never after a NaN/Inf; once per step)."""
        self.checkpoint_timer.done()
        if run.latest() is not None and run.latest().name == f"step_{self.step:08d}.pt":
            return run.latest()
        self.guard.check(self.step, self.dist, run.last_good(), DIVERGED_ADVICE)
        rng = gather_rng_states(self.dist)
        path = run.save({"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "step": self.step, "tokens": self.tokens, "train_time_s": self.train_time,
                         "valid_loss": self.valid_loss, "valid_step": self.valid_step, "best_valid": self.best.loss,
                         "best_step": self.best.step, "rng": rng, "config": self.cfg.to_dict()}, self.step)
        self.best.checkpointed()
        return path

    def stop_if_requested(self, run: Workdir, signals: StopSignals) -> None:
        """At a step boundary: on SIGTERM / SIGUSR1 (any rank), checkpoint and raise TrainingInterrupted."""
        if self.dist.any(signals.requested() is not None)[0]:
            path = self.save(run)
            raise interrupted(signals.requested() or "a stop requested on another rank", self.step, path)

    def summary(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"steps": self.step, "tokens": self.tokens, "train_time_s": round(self.train_time, 3),
                "valid_loss": self.valid_loss, "world_size": self.dist.world,
                "gradient_accumulation": cfg.batch_size // (cfg.micro_batch_size * self.dist.world),
                "precision": self.precision.name,
                "stopped_by": "time" if self.step < self.total_steps else "budget", "total_steps": self.total_steps,
                "budgets": self.budgets, "train_blocks": len(self.train_blocks),
                "epochs": self.step * cfg.batch_size / len(self.train_blocks),  # passes over the training blocks
                "best_step": self.best.step, "best_valid_loss": self.best.loss,
                "parameters": count_parameters(self.raw_model),
                "non_embedding_parameters": count_parameters(self.raw_model, non_embedding=True)}

    def write_final(self, out: Path, run: Workdir) -> None:
        """MODEL_DIR: the best model at its top level, the last in last/, and provenance; rank 0, atomically."""
        if self.dist.is_main:
            best, step = self.best.step, self.step
            info = {**provenance(self.cfg.to_dict()), "units": str(self.units), "units_meta": self.units_meta,
                    "data": self.data_meta["stats"], "training": self.summary(), "init_from": run.init_from,
                    "conventions": {"document_boundaries": "separator tokens + " + (
                        "plain causal attention" if self.cfg.cross_document_attention else
                        "no attention across utterances (positions restart per utterance)"),
                        "model": (f"top level: the best model (lowest validation loss, step {best}); {LAST}/: the "
                                  f"final model (step {step})") if best is not None else
                        f"top level and {LAST}/: the final model (step {step}; no best model: no validation data, "
                        "or its directory in the work directory was deleted)"}}
            write_model_dir(self.raw_model, self.vocab, out, info, best=None if best is None else self.best.path(best))
            print(f"lm.train: wrote {out} after {step} steps ({self.tokens} tokens), valid loss {self.valid_loss}, "
                  f"best {self.best.loss} at step {best}", file=sys.stderr)
            epochs = self.summary()["epochs"]
            if epochs > MANY_EPOCHS:
                print(f"lm.train: warning: {epochs:.0f} passes over {len(self.train_blocks)} training blocks: the LM "
                      "has probably memorised its corpus (a larger corpus, or fewer steps)", file=sys.stderr)
        self.dist.barrier()


def train(units: str | Path, workdir: str | Path, out: str | Path, cfg: TrainConfig, *,
          init_from: str | Path | None = None, stop_after_s: float | None = None) -> dict[str, Any]:
    """Train (or resume) a unit LM and write `out`; returns the training summary (also in out/provenance.json).

    `init_from` (a work directory or checkpoint of another run) starts an empty WORKDIR from that checkpoint's
    weights, optimizer, RNG and step, with this config; ignored once WORKDIR holds its own checkpoint.
    """
    units, workdir, out = Path(units), Path(workdir), Path(out)
    dist = setup_distributed()
    try:
        trainer = LMTrainer(cfg, units, workdir, dist)
        with Workdir(workdir, trainer.identity, dist) as run, StopSignals(stop_after_s=stop_after_s) as signals:
            trainer.load(run.start(cfg.to_dict(), init_from), run)
            trainer.fit(run, signals)
            trainer.write_final(out, run)
            run.finish(trainer.step)
        return trainer.summary()
    finally:
        teardown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", "--units", dest="units", required=True,
                        help="a folder packed by `python -m lm.pack` (what the workflow passes), or deduplicated "
                             "training units (Parquet, packed into WORKDIR.data first)")
    parser.add_argument("--workdir", required=True, help="resume state: checkpoints, metrics.jsonl, config.json")
    parser.add_argument("--out", required=True, help="final model directory (Hugging Face save_pretrained)")
    parser.add_argument("--config", default="{}", help="JSON object of hyperparameters (see lm/config.py)")
    parser.add_argument("--init-from", default=None, metavar="WORKDIR_OR_CHECKPOINT",
                        help="start an empty --workdir from another run's checkpoint, with this --config")
    parser.add_argument("--stop-after-seconds", type=float, default=None, metavar="SECONDS",
                        help="after this wall-clock time, checkpoint at the next step and exit 75 (to resume)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    cfg = loads(TrainConfig, args.config)
    try:
        train(args.units, args.workdir, args.out, cfg, init_from=args.init_from, stop_after_s=args.stop_after_seconds)
    except TrainingDiverged as err:
        changes = {"lr": cfg.lr / 2, "min_lr": cfg.min_lr / 2}
        raise retry_advice("lm.train", argv, cfg.to_dict(), changes, err, changes["lr"]) from None


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main, memory_hint=MEMORY_HINT)
