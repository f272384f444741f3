"""SpidR / DinoSR pretraining.

Usage:
    python -m spidr.train --manifest TRAIN.tsv --workdir WORKDIR --out FINAL.pt --config '{"preset": "small"}'
        [--valid-manifest DEV.tsv] [--threads N] [--stop-after STEPS] [--stop-after-seconds S]
        [--init-from WORKDIR_OR_CHECKPOINT]
    torchrun --standalone --nproc-per-node G -m spidr.train ...      (DDP: NCCL on GPU, gloo on CPU)

The JSON config holds every hyperparameter (spidr/config.py; the workflow passes the resolved one). The global
batch (`data.global_batch_samples`) is part of the recipe, the number of processes is not: each accumulates
gradients over global / (processes x `data.batch_samples`) micro-batches, so 1, 8 or 16 GPUs train the same model
(up to float summation order); a number of processes that cannot reach the global batch exactly is refused.

Same skeleton as lm/train.py: build (data, model, optimiser) -> `common.runtime.Workdir.start` (the one resume
policy: resume, set aside, or `--init-from`) -> the loop of `train_step` -> periodic log / checkpoint /
validation -> FINAL.pt (our checkpoint format, with provenance) written atomically, last. `--stop-after` ends the
process after that many total steps (with a checkpoint) without writing FINAL.pt. Stopping early and exit codes:
common/runtime.py.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from common.config import ConfigError, loads
from common.io import file_sha256, provenance
from common.runtime import (
    Dist,
    FiniteGuard,
    MetricsLog,
    StopSignals,
    TrainingDiverged,
    Workdir,
    choose_precision,
    gather_rng_states,
    interrupted,
    perplexity,
    reapply_optimizer_settings,
    restore_rng_states,
    retry_advice,
    save_checkpoint,
    setup_distributed,
    teardown,
)
from data.audio import SAMPLE_RATE
from spidr.checkpoint import checkpoint_dict
from spidr.config import TrainConfig, batch_plan
from spidr.dataset import PretrainBatches, derived_seed, make_loader
from spidr.model import MODELS, DinoSR, compile_model
from spidr.schedules import ema_decay_at, lr_at

# A learning-curve probe: diagnostics of the model being trained (rank 0, between steps), as one JSON-able dict.
Probe = Callable[[DinoSR], dict]

DIVERGED_ADVICE = "Try a lower optim.lr, a smaller optim.clip_norm or precision fp32."
MEMORY_HINT = ("lower data.batch_samples (audio per GPU and micro-batch; the global batch stays, through gradient "
               "accumulation) or data.max_samples (the crop length); or use more GPUs")


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


class Meters:
    """Training statistics summed on the device between two log lines (no host sync per step)."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        k, v = cfg.model.num_codebooks, cfg.model.codebook_size
        # loss sum, masked frames, grad-norm sum, audio samples; then target counts and predicted probabilities
        self.sums = torch.zeros(4 + 2 * k * v, device=device, dtype=torch.float64)
        self.k, self.v, self.steps, self.start = k, v, 0, time.perf_counter()
        self.samples = 0  # audio samples, counted on the host (put into `sums` once per log line)

    def add(self, step_sums: torch.Tensor, grad_norm: torch.Tensor, samples: int) -> None:
        self.sums += step_sums
        self.sums[2] += grad_norm.detach().double()
        self.samples += samples
        self.steps += 1

    def flush(self, dist: Dist) -> dict[str, Any]:
        """Every rank's sums together, as the per-step record's statistics; the meters restart."""
        sums = self.sums.clone()
        sums[3] = float(self.samples)
        dist.all_reduce(sums)
        kv = self.k * self.v
        loss, frames, gnorm, samples = sums[:4].tolist()
        targets, preds = sums[4:4 + kv].view(self.k, self.v), sums[4 + kv:].view(self.k, self.v)
        seconds, steps = time.perf_counter() - self.start, max(self.steps, 1)
        self.sums.zero_()
        self.steps, self.samples, self.start = 0, 0, time.perf_counter()
        return {"loss": loss / max(frames, 1.0), "grad_norm": gnorm / steps / dist.world,
                "target_ppl": [round(x, 3) for x in perplexity(targets).tolist()],
                "pred_ppl": [round(x, 3) for x in perplexity(preds).tolist()],
                "active_codewords": (targets > 0).sum(-1).tolist(), "masked_frames_per_step": frames / steps,
                "audio_seconds_per_second": samples / SAMPLE_RATE / seconds, "steps_per_second": steps / seconds,
                "seconds": seconds, "audio_seconds": samples / SAMPLE_RATE}


class SpidrTrainer:
    """One pretraining run: built by `__init__` (data, model, optimiser), started by `load`, run by `fit`."""

    def __init__(self, cfg: TrainConfig, manifest: str, dist: Dist, *, valid_manifest: str | None = None,
                 probe: Probe | None = None) -> None:
        self.cfg, self.manifest, self.dist, self.probe = cfg, manifest, dist, probe
        self.plan = batch_plan(cfg.data, dist.world)  # a ConfigError before any file is touched
        self.accumulation = self.plan.accumulation
        self.precision = choose_precision(cfg.precision, dist.device)
        self.manifest_sha = file_sha256(manifest)
        self._setup_data(valid_manifest)
        self._setup_model()
        self._setup_optimizer()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.elapsed, self.audio_seconds = 0.0, 0.0
        self.last_record: dict | None = None
        self.last_valid: dict | None = None

    @property
    def identity(self) -> dict[str, Any]:
        """What a work directory must match to be resumed: the weight-changing recipe and the manifest."""
        return {"recipe": self.cfg.recipe_dict(), "data": {"manifest_sha256": self.manifest_sha}}

    def _setup_data(self, valid_manifest: str | None) -> None:
        cfg, dist = self.cfg, self.dist
        self.data = PretrainBatches(self.manifest, cfg.data, cfg.mask, cfg.model.conv_layers, seed=cfg.seed,
                                    rank=dist.rank, world=dist.world, accumulation=self.accumulation)
        self.valid = None
        if valid_manifest:
            self.valid = PretrainBatches(valid_manifest, cfg.data, cfg.mask, cfg.model.conv_layers,
                                         seed=cfg.seed + 1, rank=dist.rank, world=dist.world, shuffle=False,
                                         drop_remainder=False)

    def _setup_model(self) -> None:
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        self.model = MODELS[self.cfg.kind](self.cfg.model).to(self.dist.device)
        # The trainer updates the codebooks once per optimiser step, after all its micro-batches.
        self.model.codebooks.update_per_forward = False

    def _setup_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.model, self.cfg, self.dist.device)

    def _wrap(self) -> torch.nn.Module:
        if self.dist.world == 1:
            return self.model
        # With LayerDrop, each rank's reducer warns once that a step found no unused parameter (a false positive its
        # text allows for). It is a C++ warning printed by torch itself, out of reach of Python's warning filters.
        # Buffers (codebooks, EMA state) are kept equal by the trainer's own reductions, not re-sent every forward:
        # torch >= 2.12 names that forward_sync_buffers (broadcast_buffers is deprecated there).
        sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False})
        return DDP(self.model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
                   find_unused_parameters=self.model.cfg.layer_drop > 0, **sync)

    def load(self, state: dict[str, Any] | None, run: Workdir) -> None:
        """Start from `state` (a resumed or --init-from checkpoint; None: step 0), then compile / wrap the model."""
        if state is not None:
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as err:
                raise ConfigError(f"--init-from {run.origin}: its model does not fit this config "
                                  f"({str(err).splitlines()[0]})") from None
            if state.get("codebook_pending") is not None:
                self.model.codebooks.load_pending_state(state["codebook_pending"])
            if state["frozen"]:
                self.model.freeze_extractor()
                self._setup_optimizer()  # without the extractor's group, like the saved state
            reapply_optimizer_settings(self.optimizer, state["optimizer"])
            self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.elapsed, self.audio_seconds = state["elapsed"], state["audio_seconds"]
            restore_rng_states(state.get("rng"), self.dist)  # dropout: per micro-batch
        if self.cfg.compile:
            compile_model(self.model)
        self.ddp = self._wrap()
        self.metrics = MetricsLog(run.path / "metrics.jsonl", self.step, self.dist.is_main)
        if run.origin is not None:
            self.metrics.write({"step": self.step, "event": "init_from", **run.init_from})
        skip = self.cfg.optim.skip_nonfinite_steps if self.precision.name == "bf16" else 0
        self.guard = FiniteGuard(self.dist.device, self.step, skip_limit=skip)
        self.meters = Meters(self.cfg, self.dist.device)
        self.decay, self.lr = ema_decay_at(self.step, self.cfg), lr_at(self.step, self.cfg)  # logged before a step
        if self.dist.is_main:
            print(f"global batch: {self.plan.describe()}", file=sys.stderr)

    def train_step(self, micro_batches: list[dict]) -> None:
        """One optimiser step on this rank's `accumulation` micro-batches of the global batch."""
        cfg, dist = self.cfg, self.dist
        if not self.model.extractor_frozen and self.step >= cfg.freeze_at:
            freeze_extractor(self.model, self.optimizer)
            self.ddp = self._wrap()  # DDP caches which parameters take gradients
        self.lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.model.train()
        # The loss is the per-frame mean over the masked frames of the whole global batch. DDP averages gradients
        # over ranks, and accumulation sums them: each micro-batch's loss sum is divided by global frames / world.
        local = float(sum(b["mask"].numel() for b in micro_batches))
        frames = dist.all_reduce(torch.tensor(local, device=dist.device)) / dist.world
        sums = torch.zeros_like(self.meters.sums)
        for a, batch in enumerate(micro_batches):
            wavs = batch["wavs"].to(dist.device, non_blocking=True)
            mask = batch["mask"].to(dist.device, non_blocking=True)
            # Dropout draws belong to the micro-batch (its place in the global batch), not to the rank that runs it.
            torch.manual_seed(derived_seed("dropout", cfg.seed, self.step, dist.rank * self.accumulation + a))
            # Gradients are all-reduced once, in the last micro-batch's backward.
            last = a == len(micro_batches) - 1
            with contextlib.nullcontext() if last or dist.world == 1 else self.ddp.no_sync():
                with self.precision.autocast():
                    loss, stats = self.ddp(wavs, mask, frames)
                loss.backward()
            with torch.no_grad():
                sums[:2] += torch.stack([stats["loss_sum"].double(), stats["frames"].double()])
                sums[4:] += torch.cat([stats["target_counts"].flatten(), stats["pred_probs"].flatten()]).double()
        self.model.codebooks.step()  # statistics of every micro-batch and rank: one update, as one large batch
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else math.inf)
        if self.guard.allow_step(sums[0], gnorm):
            self.optimizer.step()
            self.meters.add(sums, gnorm, sum(b["wavs"].numel() for b in micro_batches))
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_in_epoch += 1
        # The teacher follows the student once per optimiser step, with the decay at the step just completed (the
        # official code's alignment: the first update uses decay(1), not decay(0)).
        self.decay = ema_decay_at(self.step, cfg)
        self.model.update_ema(self.decay)
        self.model.current_step.fill_(self.step)

    def global_batches(self) -> Iterator[list[dict]]:
        """This rank's micro-batches of each optimiser step, from the resumed position on, epoch after epoch."""
        cfg = self.cfg
        while True:
            self.data.set_epoch(self.epoch)
            group: list[dict] = []
            if self.batch_in_epoch < self.data.steps_per_epoch:
                for batch in make_loader(self.data, start=self.batch_in_epoch * self.accumulation,
                                         num_workers=cfg.data.num_workers,
                                         pin_memory=self.dist.device.type == "cuda"):
                    group.append(batch)
                    if len(group) == self.accumulation:
                        yield group
                        group = []
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def fit(self, run: Workdir, signals: StopSignals, stop_after: int | None = None) -> bool:
        """Train up to max_steps (or stop_after); True when max_steps was reached."""
        cfg = self.cfg
        end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
        pbar = None
        if self.dist.is_main and cfg.progress and self.step < end:
            from tqdm import tqdm

            pbar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, desc=f"pretrain {cfg.kind}/{cfg.preset}")
        valid_every = cfg.valid_interval or cfg.checkpoint_interval
        curves_every = cfg.curve_interval if self.probe is not None else None
        if curves_every and self.step == 0 and end > 0:
            self.record_curves()  # the initial point (a resumed run already has its points up to its step)
        batches = self.global_batches()
        while self.step < end:
            self.train_step(next(batches))
            if pbar is not None:
                pbar.update(1)
            if self.step % cfg.log_interval == 0 or self.step == end:
                self.log(run, pbar)
            if self.step % cfg.checkpoint_interval == 0 or self.step == end:
                self.save(run)
            if self.step % valid_every == 0 or self.step == cfg.max_steps:
                self.validate()
            if curves_every and (self.step % curves_every == 0 or self.step == cfg.max_steps):
                self.record_curves()
            self.stop_if_requested(run, signals, pbar)
        if pbar is not None:
            pbar.close()
        return self.step >= cfg.max_steps

    def log(self, run: Workdir, pbar: Any = None) -> None:
        self.guard.check(self.step, self.dist, run.last_good(), DIVERGED_ADVICE)
        stats = self.meters.flush(self.dist)
        self.elapsed += stats.pop("seconds")
        self.audio_seconds += stats.pop("audio_seconds")
        record = {"split": "train", "step": self.step, "epoch": self.epoch, **stats, "lr": self.lr,
                  "ema_decay": self.decay, "skipped_steps": self.guard.take_skipped(),
                  "codebook_layers": self.cfg.model.codebook_layers, **self.plan.to_dict(),
                  "extractor_frozen": self.model.extractor_frozen, "elapsed_s": round(self.elapsed, 3),
                  "process_cpu_s": round(time.process_time(), 3),  # this process, all threads (wall time is shared)
                  "audio_hours_seen": self.audio_seconds / 3600}
        self.metrics.write(record)
        if pbar is not None:
            pbar.set_postfix(loss=f"{record['loss']:.3f}", ppl=f"{sum(record['target_ppl']) / self.meters.k:.0f}",
                             aps=f"{record['audio_seconds_per_second']:.0f}", refresh=False)
        self.last_record = record

    def save(self, run: Workdir) -> Path:
        """A resumable checkpoint at this step (never after a NaN/Inf; once per step)."""
        if run.latest() is not None and run.latest().name == f"step_{self.step:08d}.pt":
            return run.latest()
        self.guard.check(self.step, self.dist, run.last_good(), DIVERGED_ADVICE)
        rng = gather_rng_states(self.dist)
        payload = None
        if self.dist.is_main:
            payload = checkpoint_dict(
                self.model, step=self.step, train_config=self.cfg.to_dict(), optimizer=self.optimizer.state_dict(),
                epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, frozen=self.model.extractor_frozen,
                codebook_pending=self.model.codebooks.pending_state(), rng=rng, batch=self.plan.to_dict(),
                elapsed=self.elapsed, audio_seconds=self.audio_seconds, manifest_sha256=self.manifest_sha)
        return run.save(payload, self.step)

    def stop_if_requested(self, run: Workdir, signals: StopSignals, pbar: Any = None) -> None:
        """At a step boundary: on SIGTERM / SIGUSR1 (any rank), log and checkpoint this step, then raise."""
        if not self.dist.any(signals.requested() is not None)[0]:
            return
        if self.meters.steps:
            self.log(run, pbar)
        path = self.save(run)
        raise interrupted(signals.requested() or "a stop requested on another rank", self.step, path)

    @torch.no_grad()
    def validate(self) -> None:
        if self.valid is None:
            return
        self.model.eval()
        k, v = self.cfg.model.num_codebooks, self.cfg.model.codebook_size
        acc = torch.zeros(2 + 2 * k * v, device=self.dist.device, dtype=torch.float64)
        for batch in make_loader(self.valid):
            with self.precision.autocast():
                _, stats = self.model(batch["wavs"].to(self.dist.device), batch["mask"].to(self.dist.device))
            acc += torch.cat([torch.stack([stats["loss_sum"].float(), stats["frames"]]).double(),
                              stats["target_counts"].flatten().double(), stats["pred_probs"].flatten().double()])
        self.dist.all_reduce(acc)
        targets, preds = acc[2:2 + k * v].view(k, v), acc[2 + k * v:].view(k, v)
        self.last_valid = {
            "split": "valid", "step": self.step, "loss": (acc[0] / acc[1].clamp_min(1)).item(),
            "target_ppl": [round(x, 3) for x in perplexity(targets).tolist()],
            "pred_ppl": [round(x, 3) for x in perplexity(preds).tolist()],
            "active_codewords": (targets > 0).sum(-1).tolist(),
        }
        self.metrics.write(self.last_valid)

    def record_curves(self) -> None:
        """One learning-curve point: the probe's diagnostics of the model now (rank 0; the others wait at the next
        collective). The model is left in eval mode; every train step sets train mode again."""
        if self.probe is None or not self.dist.is_main:
            return
        start = time.perf_counter()
        record = self.probe(self.model)
        self.metrics.write({"split": "curves", "step": self.step, **record,
                            "probe_seconds": round(time.perf_counter() - start, 3)})

    def write_final(self, out: str | Path, run: Workdir) -> None:
        """The final checkpoint: weights, config and provenance, written atomically once training is complete."""
        if self.valid is not None and self.last_valid is None:
            self.validate()
        if self.dist.is_main:
            summary = {
                "steps": self.step, "epochs": self.epoch, "wall_time_s": round(self.elapsed, 1),
                "audio_hours_seen": self.audio_seconds / 3600, "world_size": self.dist.world,
                "batch": self.plan.to_dict(), "device": str(self.dist.device),
                "bf16": self.precision.name == "bf16", "manifest": str(Path(self.manifest).resolve()),
                "manifest_sha256": self.manifest_sha,
                "train_audio_hours": self.data.audio_seconds / 3600,  # the whole manifest (every rank plans it all)
                "last_train": self.last_record, "last_valid": self.last_valid, "init_from": run.init_from,
                "schedule": self.cfg.schedule(),
            }
            save_checkpoint(checkpoint_dict(self.model, step=self.step, train_config=self.cfg.to_dict(),
                                            provenance={**provenance(self.cfg.to_dict()), "training": summary}), out)
        self.dist.barrier()


def train(config: TrainConfig | dict, manifest: str, workdir: str, out: str | None, *,
          valid_manifest: str | None = None, stop_after: int | None = None, init_from: str | Path | None = None,
          stop_after_s: float | None = None, probe: Probe | None = None) -> SpidrTrainer:
    """Train (or resume) to max_steps and write `out`; `init_from` starts an empty workdir from another run.

    `config`: a TrainConfig, or its JSON object (resolved by TrainConfig.from_dict). `probe` computes the
    learning-curve points that `curve_interval` asks for (eval.curves builds it).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if cfg.curve_interval is not None and probe is None:
        raise ConfigError("curve_interval needs a dev set with phone labels: run the trainer through "
                          "`python -m eval.curves train --dev-manifest DEV.tsv --phones PHONES.jsonl -- "
                          "SPIDR.TRAIN ARGS` (the workflow does), or drop curve_interval")
    dist = setup_distributed(cfg.device)
    try:
        trainer = SpidrTrainer(cfg, manifest, dist, valid_manifest=valid_manifest, probe=probe)
        with (Workdir(workdir, trainer.identity, dist, keep=cfg.keep_checkpoints) as run,
              StopSignals(stop_after_s=stop_after_s) as signals):
            trainer.load(run.start(cfg.to_dict(), init_from, facts={"schedule": cfg.schedule()}), run)
            if trainer.fit(run, signals, stop_after) and out is not None:
                trainer.write_final(out, run)
                run.finish(trainer.step)
        return trainer
    finally:
        teardown()


def main(argv: list[str] | None = None, probe: Probe | None = None, entry: str = "spidr.train") -> None:
    """The command line; `entry` is how the divergence advice names this command (eval.curves wraps it)."""
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
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = loads(TrainConfig, args.config)
    try:
        train(cfg, args.manifest, args.workdir, args.out, valid_manifest=args.valid_manifest,
              stop_after=args.stop_after, init_from=args.init_from, stop_after_s=args.stop_after_seconds, probe=probe)
    except TrainingDiverged as err:
        changes = {"optim": {"lr": cfg.optim.lr / 2}}
        raise retry_advice(entry, argv, cfg.to_dict(), changes, err, cfg.optim.lr / 2) from None


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main, memory_hint=MEMORY_HINT)
