"""SpidR / DinoSR pretraining.

Usage:
    python -m spidr.train --manifest TRAIN.tsv --workdir WORKDIR --out FINAL.pt --config '{"preset": "small"}'
        [--valid-manifest DEV.tsv] [--threads N] [--stop-after STEPS] [--stop-after-seconds S]
        [--init-from WORKDIR_OR_CHECKPOINT]
    torchrun --standalone --nproc-per-node G -m spidr.train ...      (DDP: NCCL on GPU, gloo on CPU)

The JSON config holds every hyperparameter (see spidr/config.py). The global batch (`data.global_batch_samples`)
is part of the recipe; the number of processes is not: each one accumulates gradients over
global / (processes x `data.batch_samples`) micro-batches, so 1, 8 or 16 GPUs train the same model (up to float
summation order); a number of processes that cannot reach the global batch exactly is refused. The layout is
printed at the start and recorded in metrics.jsonl and the checkpoints.

WORKDIR keeps resumable checkpoints (`checkpoints/step_XXXXXXXX.pt`), `metrics.jsonl` and `config.json`; rerunning
the same command resumes from the newest checkpoint, also on another number of processes (a workdir trained with
another recipe is refused). FINAL.pt (our checkpoint format, with provenance) is written atomically, last.
`--stop-after` ends the process after that many total steps (with a checkpoint) without writing FINAL.pt.

Stopping early (common/runtime.py): a NaN/Inf loss or gradient stops the run with exit code 3 and no checkpoint
after it, and prints the command that continues from the last good checkpoint with a lower optim.lr in a new work
directory (`--init-from OLD_WORKDIR_OR_CHECKPOINT`, which records the origin and the changed keys). SIGTERM / SIGUSR1
(a SLURM time limit) and `--stop-after-seconds` finish the current step, write a resumable checkpoint and exit
with code 75.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from common.io import atomic_write_json, file_sha256, provenance
from common.runtime import (
    FiniteGuard,
    MetricsLog,
    StopSignals,
    TrainingDiverged,
    choose_precision,
    config_changes,
    exit_codes,
    gather_rng_states,
    init_record,
    interrupted,
    load_checkpoint,
    perplexity,
    restore_rng_states,
    retry_command,
    retry_workdir,
    save_checkpoint,
    setup_distributed,
)
from data.audio import SAMPLE_RATE
from spidr.checkpoint import checkpoint_dict
from spidr.config import ConfigError, TrainConfig, batch_plan, from_dict, from_json
from spidr.dataset import PretrainBatches, derived_seed, make_loader
from spidr.model import MODELS, DinoSR, compile_model
from spidr.schedules import ema_decay_at, lr_at

# A learning-curve probe: diagnostics of the model being trained (rank 0, between steps), as one JSON-able dict.
Probe = Callable[[DinoSR], dict]


class WorkdirMismatch(RuntimeError):
    """The workdir holds a run trained with another recipe."""


DIVERGED_ADVICE = "Try a lower optim.lr, a smaller optim.clip_norm or precision fp32."


# ---------------------------------------------------------------------------------------------------------------
# Optimiser


def make_optimizer(model: DinoSR, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, group 0 = student transformer, heads, mask embedding; group 1 = CNN + projection (until frozen)."""
    front = {id(p) for p in model.extractor_parameters()}
    main = [p for n, p in model.named_parameters() if p.requires_grad and id(p) not in front
            and not n.startswith("teacher.")]
    groups = [{"params": main, "name": "main"}]
    if not model.extractor_frozen:
        groups.append({"params": model.extractor_parameters(), "name": "extractor"})
    o = cfg.optim
    return torch.optim.AdamW(
        groups, lr=lr_at(0, cfg), betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
        fused=True if device.type == "cuda" else None,
    )


def freeze_extractor(model: DinoSR, optimizer: torch.optim.Optimizer) -> None:
    """Freeze CNN + projection and delete their optimizer group and state (the paper, at step 200k).

    There is no LR-scheduler object holding per-group state (the rate is a pure function of the step), which is
    what breaks resuming across the freeze in the official code.
    """
    model.freeze_extractor()
    for i, group in enumerate(optimizer.param_groups):
        if group.get("name") == "extractor":
            for p in group["params"]:
                optimizer.state.pop(p, None)
            del optimizer.param_groups[i]
            break


# ---------------------------------------------------------------------------------------------------------------
# Workdir


def checkpoint_paths(workdir: Path) -> list[Path]:
    return sorted((workdir / "checkpoints").glob("step_*.pt"))


def origin_checkpoint(init_from: str | Path) -> Path:
    """The checkpoint `--init-from` names: a work directory's newest checkpoint, or a checkpoint file."""
    path = Path(init_from)
    if path.is_dir():
        found = checkpoint_paths(path)
        if not found:
            raise FileNotFoundError(f"--init-from {init_from}: no checkpoints/step_*.pt in this work directory")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"--init-from {init_from}: no such work directory or checkpoint")
    return path


def check_workdir(workdir: Path, cfg: TrainConfig, manifest_sha: str) -> None:
    """Record the recipe in WORKDIR/config.json; refuse to resume a workdir trained with another one."""
    path = workdir / "config.json"
    want = {"recipe": cfg.recipe_dict(), "manifest_sha256": manifest_sha}
    if path.is_file() and checkpoint_paths(workdir):
        have = json.loads(path.read_text())
        have = {"recipe": have.get("recipe"), "manifest_sha256": have.get("manifest_sha256")}
        if have != want:
            diff = [f"{key}: {a!r} -> {b!r}" for key, (a, b) in config_changes(have, want).items()]
            raise WorkdirMismatch(
                f"{workdir} holds checkpoints of a different run ({'; '.join(diff[:6])}); "
                "use another --workdir or delete this one"
            )
    origin = json.loads(path.read_text()).get("init_from") if path.is_file() else None  # kept across resumes
    atomic_write_json(path, {**want, "config": cfg.to_dict(), "schedule": cfg.schedule(), "init_from": origin})


# ---------------------------------------------------------------------------------------------------------------
# Training


class Trainer:
    def __init__(self, cfg: TrainConfig, manifest: str, workdir: str, *, valid_manifest: str | None = None,
                 init_from: str | Path | None = None, probe: Probe | None = None) -> None:
        self.cfg = cfg
        self.probe = probe
        self.dist = setup_distributed(cfg.device)
        self.rank, self.world, self.device = self.dist.rank, self.dist.world, self.dist.device
        self.main = self.dist.is_main
        self.plan = batch_plan(cfg.data, self.world)  # a ConfigError before any file is touched
        self.accumulation = self.plan.accumulation
        self.workdir = Path(workdir)
        self.precision = choose_precision(cfg.precision, self.device)
        self.manifest = manifest
        self.manifest_sha = file_sha256(manifest)
        if self.main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "checkpoints").mkdir(exist_ok=True)
            check_workdir(self.workdir, cfg, self.manifest_sha)
        self._barrier()

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = MODELS[cfg.kind](cfg.model).to(self.device)
        # The trainer updates the codebooks once per optimiser step, after all its micro-batches.
        self.model.codebooks.update_per_forward = False
        self.data = PretrainBatches(manifest, cfg.data, cfg.mask, cfg.model.conv_layers, seed=cfg.seed,
                                    rank=self.rank, world=self.world, accumulation=self.accumulation)
        self.valid = None
        if valid_manifest:
            self.valid = PretrainBatches(valid_manifest, cfg.data, cfg.mask, cfg.model.conv_layers,
                                         seed=cfg.seed + 1, rank=self.rank, world=self.world, shuffle=False,
                                         drop_remainder=False)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.elapsed, self.audio_seconds = 0.0, 0.0
        # Where to start: WORKDIR's newest checkpoint (a resume), else --init-from's (a new run from another one).
        resume = checkpoint_paths(self.workdir)[-1] if checkpoint_paths(self.workdir) else None
        origin = origin_checkpoint(init_from) if resume is None and init_from is not None else None
        if resume is not None and init_from is not None and self.main:
            print(f"{self.workdir} already holds checkpoints: resuming them, not --init-from", file=sys.stderr)
        state = load_checkpoint(resume or origin) if (resume or origin) is not None else None
        if origin is not None and "optimizer" not in state:
            raise ConfigError(f"--init-from {origin}: a final checkpoint without optimizer state; give the run's work "
                              "directory or one of its checkpoints/step_*.pt")
        self.init_from = state.get("init_from") if state is not None else None
        if origin is not None:
            self.init_from = init_record(origin, state, self._origin_changes(state))
            if self.main:
                config_path = self.workdir / "config.json"
                atomic_write_json(config_path, {**json.loads(config_path.read_text()), "init_from": self.init_from})
        if state is not None:
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as err:
                raise ConfigError(f"--init-from {origin}: its model does not fit this config "
                                  f"({str(err).splitlines()[0]})") from None
            if state.get("codebook_pending") is not None:
                self.model.codebooks.load_pending_state(state["codebook_pending"])
            if state["frozen"]:
                self.model.freeze_extractor()
            self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.elapsed, self.audio_seconds = state["elapsed"], state["audio_seconds"]
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # the saved values; --init-from may have changed them
                group.update(betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        restore_rng_states(state.get("rng") if state is not None else None, self.dist)  # dropout: per micro-batch
        self.resumed_from, self.origin = resume, origin
        self.saved_step = self.step if resume is not None else -1
        if cfg.compile:
            compile_model(self.model)
        self.ddp = self._wrap()
        self.metrics = MetricsLog(self.workdir / "metrics.jsonl", self.step, self.main)
        if self.main:
            print(f"global batch: {self.plan.describe()}", file=sys.stderr)
        if origin is not None:
            self.metrics.write({"step": self.step, "event": "init_from", **self.init_from})
        self.guard = FiniteGuard(self.device, self.step)
        self.signals = StopSignals(watch_parent=False)  # train() installs the real one
        self._reset_meters()

    def _origin_changes(self, state: dict) -> dict[str, list]:
        """Config keys (and the manifest) that differ between an --init-from checkpoint and this run."""
        changes = config_changes(state.get("train_config") or {}, self.cfg.to_dict())
        if state.get("manifest_sha256", self.manifest_sha) != self.manifest_sha:
            changes["manifest_sha256"] = [state["manifest_sha256"], self.manifest_sha]
        return changes

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _barrier(self) -> None:
        self.dist.barrier()

    def _wrap(self) -> torch.nn.Module:
        if self.world == 1:
            return self.model
        return DDP(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=self.model.cfg.layer_drop > 0,
        )

    def _reset_meters(self) -> None:
        k, v = self.cfg.model.num_codebooks, self.cfg.model.codebook_size
        z = lambda *s: torch.zeros(*s, device=self.device, dtype=torch.float64)  # noqa: E731
        self.m_loss, self.m_frames = z(()), z(())
        self.m_targets, self.m_preds = z(k, v), z(k, v)
        self.m_samples, self.m_steps, self.m_time = 0, 0, time.perf_counter()
        self.m_gnorm = z(())

    # -- one update -------------------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[dict]) -> None:
        """One optimiser step on this rank's `accumulation` micro-batches of the global batch."""
        cfg = self.cfg
        if not self.model.extractor_frozen and self.step >= cfg.freeze_at:
            freeze_extractor(self.model, self.optimizer)
            if self.world > 1:  # DDP caches which parameters take gradients
                self.ddp = self._wrap()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        # The loss is the per-frame mean over the masked frames of the whole global batch. DDP averages gradients
        # over ranks, and accumulation sums them: each micro-batch's loss sum is divided by global frames / world.
        local = float(sum(b["mask"].numel() for b in micro_batches))
        frames = self.dist.all_reduce(torch.tensor(local, device=self.device)) / self.world
        for a, batch in enumerate(micro_batches):
            wavs = batch["wavs"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            # Dropout draws belong to the micro-batch (its place in the global batch), not to the rank that runs it.
            torch.manual_seed(derived_seed("dropout", cfg.seed, self.step, self.rank * self.accumulation + a))
            last = a == len(micro_batches) - 1
            # Gradients are all-reduced once, in the last micro-batch's backward.
            sync = contextlib.nullcontext() if last or self.world == 1 else self.ddp.no_sync()
            with sync:
                with self.precision.autocast():
                    loss, stats = self.ddp(wavs, mask, frames)
                loss.backward()
            with torch.no_grad():
                self.m_loss += stats["loss_sum"].double()
                self.m_frames += stats["frames"].double()
                self.m_targets += stats["target_counts"].double()
                self.m_preds += stats["pred_probs"].double()
            self.guard.update(stats["loss_sum"])  # on the device: checked when logging and before any save
            self.m_samples += wavs.numel()
        self.model.codebooks.step()  # statistics of every micro-batch and rank: one update, as one large batch
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_in_epoch += 1
        # The teacher follows the student once per optimiser step, with the decay at the step just completed (the
        # official code's alignment: the first update uses decay(1), not decay(0)).
        self.decay = ema_decay_at(self.step, cfg)
        self.model.update_ema(self.decay)
        self.model.current_step.fill_(self.step)
        self.lr = lr
        self.m_gnorm += gnorm.detach().double()
        self.guard.update(gnorm)
        self.m_steps += 1

    # -- logging, checks, checkpoints -------------------------------------------------------------------------

    def check_finite(self) -> None:
        saved = checkpoint_paths(self.workdir)
        self.guard.check(self.step, self.dist, saved[-1] if saved else self.origin, DIVERGED_ADVICE)

    def log(self, pbar) -> dict:
        self.check_finite()
        packed = torch.cat([
            torch.stack([self.m_loss, self.m_frames, self.m_gnorm]),
            torch.tensor([float(self.m_samples)], device=self.device, dtype=torch.float64),
            self.m_targets.flatten(), self.m_preds.flatten(),
        ])
        self.dist.all_reduce(packed)
        k, v = self.m_targets.shape
        loss, frames, gnorm, samples = packed[:4].tolist()
        targets = packed[4 : 4 + k * v].view(k, v)
        preds = packed[4 + k * v :].view(k, v)
        dt = time.perf_counter() - self.m_time
        self.elapsed += dt
        self.audio_seconds += samples / SAMPLE_RATE
        record = {
            "split": "train",
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss / max(frames, 1.0),
            "lr": self.lr,
            "ema_decay": self.decay,
            "grad_norm": gnorm / max(self.m_steps, 1) / self.world,
            "target_ppl": [round(x, 3) for x in perplexity(targets).tolist()],
            "pred_ppl": [round(x, 3) for x in perplexity(preds).tolist()],
            "active_codewords": (targets > 0).sum(-1).tolist(),
            "codebook_layers": self.cfg.model.codebook_layers,
            "masked_frames_per_step": frames / max(self.m_steps, 1),
            "audio_seconds_per_second": samples / SAMPLE_RATE / dt,
            "steps_per_second": self.m_steps / dt,
            **self.plan.to_dict(),
            "extractor_frozen": self.model.extractor_frozen,
            "elapsed_s": round(self.elapsed, 3),
            "process_cpu_s": round(time.process_time(), 3),  # this process, all threads (wall time is shared)
            "audio_hours_seen": self.audio_seconds / 3600,
        }
        self.metrics.write(record)
        if pbar is not None:
            pbar.set_postfix(loss=f"{record['loss']:.3f}", ppl=f"{sum(record['target_ppl']) / k:.0f}",
                             aps=f"{record['audio_seconds_per_second']:.0f}", refresh=False)
        self.last_record = record
        self._reset_meters()
        return record

    def save(self) -> Path:
        self.check_finite()
        path = self.workdir / "checkpoints" / f"step_{self.step:08d}.pt"
        rng = gather_rng_states(self.dist)
        if self.main:
            payload = checkpoint_dict(
                self.model, step=self.step, train_config=self.cfg.to_dict(),
                optimizer=self.optimizer.state_dict(), epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                frozen=self.model.extractor_frozen, codebook_pending=self.model.codebooks.pending_state(), rng=rng,
                batch=self.plan.to_dict(),
                elapsed=self.elapsed, audio_seconds=self.audio_seconds, manifest_sha256=self.manifest_sha,
                init_from=self.init_from,
            )
            save_checkpoint(payload, path)
            for old in checkpoint_paths(self.workdir)[: -max(1, self.cfg.keep_checkpoints)]:
                old.unlink(missing_ok=True)
        self.saved_step = self.step
        self._barrier()
        return path

    def stop_if_requested(self, pbar=None) -> None:
        """At a step boundary: on SIGTERM / SIGUSR1 (any rank), log and checkpoint this step, then raise."""
        if not self.dist.any(self.signals.requested() is not None)[0]:
            return
        if self.m_steps:
            self.log(pbar)
        path = self.save() if self.saved_step != self.step else checkpoint_paths(self.workdir)[-1]
        raise interrupted(self.signals.requested() or "a stop requested on another rank", self.step, path)

    @torch.no_grad()
    def validate(self) -> dict | None:
        if self.valid is None:
            return None
        self.model.eval()
        k, v = self.cfg.model.num_codebooks, self.cfg.model.codebook_size
        acc = torch.zeros(2 + 2 * k * v, device=self.device, dtype=torch.float64)
        for batch in make_loader(self.valid):
            with self.precision.autocast():
                _, stats = self.model(batch["wavs"].to(self.device), batch["mask"].to(self.device))
            acc += torch.cat([torch.stack([stats["loss_sum"].float(), stats["frames"]]).double(),
                              stats["target_counts"].flatten().double(), stats["pred_probs"].flatten().double()])
        self.dist.all_reduce(acc)
        targets, preds = acc[2 : 2 + k * v].view(k, v), acc[2 + k * v :].view(k, v)
        record = {
            "split": "valid", "step": self.step, "loss": (acc[0] / acc[1].clamp_min(1)).item(),
            "target_ppl": [round(x, 3) for x in perplexity(targets).tolist()],
            "pred_ppl": [round(x, 3) for x in perplexity(preds).tolist()],
            "active_codewords": (targets > 0).sum(-1).tolist(),
        }
        self.metrics.write(record)
        self.last_valid = record
        return record

    def record_curves(self) -> None:
        """One learning-curve point: the probe's diagnostics of the model now (rank 0; the others wait at the next
        collective). The model is left in eval mode; every train step sets train mode again."""
        if self.probe is None or not self.main:
            return
        start = time.perf_counter()
        record = self.probe(self.model)
        self.metrics.write({"split": "curves", "step": self.step, **record,
                            "probe_seconds": round(time.perf_counter() - start, 3)})

    # -- the loop ---------------------------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None) -> bool:
        """Train up to max_steps (or stop_after); True when max_steps was reached."""
        cfg = self.cfg
        end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
        self.decay, self.lr = ema_decay_at(self.step, cfg), lr_at(self.step, cfg)  # logged before any step
        self.last_record = self.last_valid = None
        pbar = None
        if self.main and cfg.progress and self.step < end:
            from tqdm import tqdm

            pbar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"pretrain {cfg.kind}/{cfg.preset}")
        valid_every = cfg.valid_interval or cfg.checkpoint_interval
        curves_every = cfg.curve_interval if self.probe is not None else None
        if curves_every and self.step == 0 and end > 0:
            self.record_curves()  # the initial point (a resumed run already has its points up to its step)
        try:
            while self.step < end:
                self.data.set_epoch(self.epoch)
                if self.batch_in_epoch >= self.data.steps_per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    continue
                loader = make_loader(self.data, start=self.batch_in_epoch * self.accumulation,
                                     num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda")
                micro_batches: list[dict] = []
                for batch in loader:
                    micro_batches.append(batch)
                    if len(micro_batches) < self.accumulation:
                        continue
                    self.train_step(micro_batches)
                    micro_batches = []
                    if pbar is not None:
                        pbar.update(1)
                    if self.step % cfg.log_interval == 0 or self.step == end:
                        self.log(pbar)
                    if self.step % cfg.checkpoint_interval == 0 or self.step == end:
                        self.save()
                    if self.step % valid_every == 0 or self.step == cfg.max_steps:
                        self.validate()
                    if curves_every and (self.step % curves_every == 0 or self.step == cfg.max_steps):
                        self.record_curves()
                    self.stop_if_requested(pbar)
                    if self.step >= end:
                        break
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        finally:
            if pbar is not None:
                pbar.close()
        return self.step >= cfg.max_steps

    def write_final(self, out: str | Path) -> None:
        """The final checkpoint: weights, config and provenance, written atomically once training is complete."""
        if not self.main:
            return
        summary = {
            "steps": self.step, "epochs": self.epoch, "wall_time_s": round(self.elapsed, 1),
            "audio_hours_seen": self.audio_seconds / 3600, "world_size": self.world, "batch": self.plan.to_dict(),
            "device": str(self.device),
            "bf16": self.precision.name == "bf16", "manifest": str(Path(self.manifest).resolve()),
            "manifest_sha256": self.manifest_sha,
            "train_audio_hours": self.data.audio_seconds / 3600,  # the whole manifest (every rank plans it all)
            "last_train": self.last_record, "last_valid": self.last_valid, "init_from": self.init_from,
            "schedule": self.cfg.schedule(),
        }
        payload = checkpoint_dict(
            self.model, step=self.step, train_config=self.cfg.to_dict(),
            provenance={**provenance(self.cfg.to_dict()), "training": summary},
        )
        save_checkpoint(payload, out)


def train(
    config: dict | TrainConfig, manifest: str, workdir: str, out: str | None, *, valid_manifest: str | None = None,
    stop_after: int | None = None, init_from: str | Path | None = None, stop_after_s: float | None = None,
    probe: Probe | None = None,
) -> Trainer:
    """Train (or resume) to max_steps and write `out`; `init_from` starts an empty workdir from another run.

    `probe` computes the learning-curve points that `curve_interval` asks for (eval.curves builds it).
    """
    cfg = config if isinstance(config, TrainConfig) else from_dict(config)
    if cfg.curve_interval is not None and probe is None:
        raise ConfigError("curve_interval needs a dev set with phone labels: run the trainer through "
                          "`python -m eval.curves train --dev-manifest DEV.tsv --phones PHONES.jsonl -- "
                          "SPIDR.TRAIN ARGS` (the workflow does), or drop curve_interval")
    trainer = Trainer(cfg, manifest, workdir, valid_manifest=valid_manifest, init_from=init_from, probe=probe)
    if trainer.main and trainer.resumed_from is not None:
        print(f"resuming from {trainer.resumed_from} (step {trainer.step})", file=sys.stderr)
    if trainer.main and trainer.origin is not None:
        print(f"initialised from {trainer.origin} (step {trainer.step})", file=sys.stderr)
    with StopSignals(stop_after_s=stop_after_s) as trainer.signals:
        done = trainer.fit(stop_after)
        if done and out is not None:
            if trainer.last_valid is None and trainer.valid is not None:
                trainer.validate()
            trainer.stop_if_requested()  # a stop signal never lets the final checkpoint appear
            trainer.write_final(out)
    trainer._barrier()
    return trainer


def main(argv: list[str] | None = None, probe: Probe | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="training manifest (TSV: id, path, num_samples, speaker)")
    parser.add_argument("--workdir", required=True, help="resumable state: checkpoints, metrics.jsonl, config.json")
    parser.add_argument("--out", required=True, help="final checkpoint, written last")
    parser.add_argument("--config", default="{}", help="JSON object of hyperparameters (spidr/config.py)")
    parser.add_argument("--valid-manifest", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this step")
    parser.add_argument("--stop-after-seconds", type=float, default=None, metavar="SECONDS",
                        help="after this wall-clock time, checkpoint at the next step and exit 75 (to resume)")
    parser.add_argument("--init-from", default=None, metavar="WORKDIR_OR_CHECKPOINT",
                        help="start an empty --workdir from another run's checkpoint, with this --config")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = args.config
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        with exit_codes():
            cfg = from_json(text)
            try:
                train(cfg, args.manifest, args.workdir, args.out, valid_manifest=args.valid_manifest,
                      stop_after=args.stop_after, init_from=args.init_from,
                      stop_after_s=args.stop_after_seconds, probe=probe)
            except TrainingDiverged as err:
                raise TrainingDiverged(f"{err}\n{retry_advice(args, json.loads(text or '{}'), cfg, err)}",
                                       step=err.step, last_checkpoint=err.last_checkpoint) from None
    except (ConfigError, WorkdirMismatch, ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")


def retry_advice(args: argparse.Namespace, raw: dict, cfg: TrainConfig, err: TrainingDiverged) -> str:
    """The command that continues from the last good checkpoint with half the learning rate, in a new workdir."""
    changes = {"optim": {"lr": cfg.optim.lr / 2}}
    flags = [("--manifest", args.manifest), ("--out", args.out), ("--valid-manifest", args.valid_manifest),
             ("--threads", str(args.threads) if args.threads else None)]
    command = retry_command("spidr.train", flags, raw, changes, retry_workdir(args.workdir, cfg.optim.lr / 2),
                            err.last_checkpoint)
    start = "continue from it" if err.last_checkpoint else "start again"
    return f"To {start} with half the learning rate (optim.lr) in a new work directory:\n  {command}"


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
