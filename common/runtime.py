"""The trainers' shared runtime: distributed setup, precision, RNG state, metrics log, checkpoints and safe stops.

Both `spidr.train` and `lm.train` run on it, so the two trainers agree on:
- torchrun's environment (rank, world size, local device; NCCL on CUDA, gloo on CPU) and one TF32 policy;
- what `precision: auto | fp32 | bf16` means;
- the RNG state a checkpoint carries (python, numpy, torch CPU and CUDA, one per rank);
- the JSONL metrics log, truncated to the resumed step so a resumed run logs each step once;
- checkpoints written atomically (`common.io.atomic_write`) and read with `torch.load(weights_only=True)`;
- how a run stops early: `TrainingDiverged` (a NaN/Inf loss or gradient, exit code 3) and `TrainingInterrupted`
  (SIGTERM / SIGUSR1, e.g. a SLURM time limit, the death of the torchrun launcher, or `--stop-after-seconds`:
  exit code 75, after a resumable checkpoint);
- `--init-from`: a new work directory that continues another run's checkpoint with changed config values.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from common.artefacts import load_torch
from common.config import ConfigError
from common.io import atomic_write, atomic_write_json, atomic_write_text, code_version

EXIT_DIVERGED = 3
# sysexits.h EX_TEMPFAIL ("temporary failure, try again"): SLURM / Snakemake retry it and the retry resumes.
EXIT_INTERRUPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# The process that started us, read as early as we can: a torchrun worker compares it with its current parent to
# notice that the launcher died before the kernel could be asked to tell us (see `die_with_parent`).
LAUNCHER_PID = os.getppid()


# ---------------------------------------------------------------------------------------------------------------
# Distributed setup


@dataclass(frozen=True)
class Dist:
    """This process's place in the job, and collectives that are no-ops when it runs alone."""

    rank: int
    world: int
    device: torch.device
    cpu_group: Any = None  # a gloo group: host-side flags are agreed on without a device synchronisation

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        """In-place all-reduce (sum by default) of a tensor on this process's device; returns it."""
        if self.world > 1:
            torch_dist.all_reduce(t, op=op or torch_dist.ReduceOp.SUM)
        return t

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        return self.all_reduce(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any rank (so that every rank takes the same branch)."""
        if self.world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX, group=self.cpu_group)
        return [bool(x) for x in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def setup_distributed(device: str = "auto") -> Dist:
    """One process, or one per GPU (or CPU worker) under torchrun; `device` is auto, cpu, cuda or cuda:N."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"'device': {device!r} but CUDA is not available")
        where = torch.device("cuda", local_rank if world > 1 else (torch.device(want).index or 0))
        torch.cuda.set_device(where)
        # One TF32 policy for both trainers: off. Under bf16 autocast (the GPU default) the large matmuls run in
        # bf16 anyway; what is left in fp32 on purpose (codebook distances and EMA updates, logits for the loss)
        # should stay true fp32, and `precision: fp32` (the advice after a NaN) must mean fp32, not TF32.
        # (The legacy flags: after the newer fp32_precision API, reading cudnn.allow_tf32 raises, and libraries do.)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif want == "cpu":
        where = torch.device("cpu")
    else:
        raise ConfigError(f"'device': {device!r}; expected auto, cpu, cuda or cuda:N")
    cpu_group = None
    if world > 1:
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
        cpu_group = torch_dist.new_group(backend="gloo") if where.type == "cuda" else torch_dist.group.WORLD
    return Dist(rank, world, where, cpu_group)


def teardown() -> None:
    """Leave the process group (at the end of a run, or after an error, so that torchrun exits cleanly)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------
# Precision


@dataclass(frozen=True)
class Precision:
    """`auto` is bf16 autocast on a bf16-capable GPU and fp32 elsewhere; `bf16` autocasts on any device."""

    name: str  # "bf16" | "fp32"
    device_type: str

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def choose_precision(precision: str, device: torch.device) -> Precision:
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"'precision': {precision!r}; expected auto, fp32 or bf16")
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "fp32"
    return Precision(precision, device.type)


# ---------------------------------------------------------------------------------------------------------------
# RNG state (stored as tensors and plain values, so that checkpoints load with weights_only=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators: python, numpy, torch CPU and (on a GPU) CUDA."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s generators (older checkpoints hold only the torch ones)."""
    if state.get("python") is not None:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    if state.get("numpy") is not None:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(dist: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (what a checkpoint stores)."""
    return dist.gather(rng_state(dist.device))


def restore_rng_states(states: list[dict[str, Any]] | dict[str, Any] | None, dist: Dist) -> bool:
    """Restore this rank's state from a checkpoint's list; False when there is none for this world size."""
    if isinstance(states, dict):  # a single-process state
        states = [states]
    if not states or len(states) != dist.world:
        return False
    set_rng_state(states[dist.rank], dist.device)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Metrics log and checkpoints


class MetricsLog:
    """Append-only JSONL on rank 0; on (re)start, records after the resumed step are dropped (they will be redone)."""

    def __init__(self, path: str | Path, resume_step: int, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        if enabled and self.path.is_file():
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= resume_step]
            if len(kept) != len(lines):
                atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """torch.save through `atomic_write`: readers see the old file or the whole new one."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> Any:
    """torch.load(weights_only=True) onto the CPU (RNG states must stay there), with errors naming the file."""
    return load_torch(path, what="training checkpoint",
                      remedy="delete it to resume from an earlier checkpoint (or from scratch)")


def perplexity(weights: torch.Tensor | np.ndarray) -> torch.Tensor:
    """exp(entropy) of non-negative weights along the last axis, each row normalised (0 log 0 = 0)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    p = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum(-1))


# ---------------------------------------------------------------------------------------------------------------
# Stopping early: divergence, signals, the launcher's death


class TrainingStopped(RuntimeError):
    """A training run that stopped before its end; `exit_code` is what the command line exits with."""

    exit_code = 1


class TrainingDiverged(TrainingStopped):
    """The loss or the gradient norm became NaN/Inf; nothing was saved after the last good checkpoint."""

    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, *, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.last_checkpoint = step, last_checkpoint


class TrainingInterrupted(TrainingStopped):
    """A stop was requested (signal or launcher death); a resumable checkpoint was written first."""

    exit_code = EXIT_INTERRUPTED
    label = "stopped"  # what run_main prints before the message: a planned stop, not an error


class FiniteGuard:
    """Watches the loss and the gradient norm for NaN/Inf, the same way in both trainers.

    By default (fp32) any non-finite value stops the run: values are summed on the device (no host sync per step)
    and `check`, called before anything is saved, raises TrainingDiverged. With `skip_limit` > 0 (bf16 runs) a step
    whose gradient norm is not finite is skipped instead, as the official SpidR code's GradScaler does: no optimiser
    update (the step counter, the schedules and the EMA go on), counted in `skipped` and logged; the run stops only
    after more than `skip_limit` consecutive skips. Deciding costs one host sync per step, in those runs only.
    """

    def __init__(self, device: torch.device, step: int, skip_limit: int = 0) -> None:
        self.bad = torch.zeros((), device=device)
        self.good_step = step  # the last step known to be finite
        self.skip_limit = skip_limit
        self.skipped = 0  # steps skipped since the last `take_skipped`
        self.consecutive = 0

    def update(self, *values: torch.Tensor) -> None:
        with torch.no_grad():
            for v in values:
                self.bad += (~torch.isfinite(v.detach())).any().float()

    def allow_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether to apply this step's update. The gradient norm is the same on every rank (DDP all-reduces the
        gradients), so every rank decides alike without communicating."""
        if not self.skip_limit:
            self.update(loss, grad_norm)
            return True
        if bool(torch.isfinite(grad_norm)):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.skip_limit:
            self.bad += 1
        return False

    def take_skipped(self) -> int:
        """Steps skipped since the last call (what the metrics log records)."""
        skipped, self.skipped = self.skipped, 0
        return skipped

    def check(self, step: int, dist: Dist, last_checkpoint: Path | None, advice: str) -> None:
        """Raise TrainingDiverged if any rank saw a non-finite value since the last check (call before saving)."""
        if dist.all_reduce(self.bad.clone()).item() > 0:
            what = (f"the gradients were NaN/Inf on more than {self.skip_limit} consecutive steps (each skipped)"
                    if self.skip_limit else "loss became NaN/Inf")
            raise TrainingDiverged(
                f"{what} between step {self.good_step} and step {step}; stopping without saving. "
                f"Last good checkpoint: {last_checkpoint or 'none'}. {advice}",
                step=step, last_checkpoint=last_checkpoint)
        self.good_step = step


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when our parent dies (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere).

    torchrun starts each worker in a session of its own, so killing the workflow's process group (Ctrl-C, a
    cancelled job, `kill -9 -PGID`) leaves the workers running, and they would write their outputs later, racing a
    rerun. SIGTERM (not SIGKILL) lets the worker stop like on a SLURM time limit: at the next step boundary, with a
    resumable checkpoint in its work directory and never its final output. The kernel ties the signal to the
    thread that forked us; torchrun and shells fork from their main thread.
    """
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
        print(f"warning: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)


class StopSignals:
    """While active, SIGTERM and SIGUSR1 (and, under torchrun, the launcher's death) request a stop.

    So does the wall clock when `stop_after_s` is given (`--stop-after-seconds`: a job cut short on purpose, or
    common.launch's stop before the SLURM time limit), counted from entering the context.
    The handler only records the request: the training loop finishes its current optimizer step, writes a
    resumable checkpoint and raises TrainingInterrupted. Handlers are restored on exit (tests train in-process).
    """

    def __init__(self, watch_parent: bool | None = None, stop_after_s: float | None = None) -> None:
        if stop_after_s is not None and stop_after_s < 0:
            raise ConfigError(f"--stop-after-seconds must be >= 0, got {stop_after_s:g}")
        self.watch_parent = under_torchrun() if watch_parent is None else watch_parent
        self.stop_after_s = stop_after_s
        self.deadline: float | None = None  # time.monotonic() value, set on entering
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        if self.watch_parent:
            die_with_parent()
        if self.stop_after_s is not None:
            self.deadline = time.monotonic() + self.stop_after_s
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.reason = signal.Signals(signum).name

    def requested(self) -> str | None:
        """Why a stop was requested (e.g. 'SIGTERM'), or None."""
        if self.reason is None and self.watch_parent and os.getppid() != LAUNCHER_PID:
            self.reason = f"the launcher (pid {LAUNCHER_PID}) exited"
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = f"--stop-after-seconds {self.stop_after_s:g} reached"
        return self.reason


def interrupted(reason: str, step: int, checkpoint: Path) -> TrainingInterrupted:
    return TrainingInterrupted(f"stopped at step {step} ({reason}); resumable checkpoint {checkpoint}. Rerun the same "
                               "command to resume.")




# ---------------------------------------------------------------------------------------------------------------
# The work directory and the one resume policy of both trainers


class WorkdirBusy(RuntimeError):
    """Another live trainer holds the work directory."""


CONFIG_JSON = "config.json"
CHECKPOINTS = "checkpoints"


def config_changes(old: dict[str, Any], new: dict[str, Any], where: str = "") -> dict[str, list[Any]]:
    """{dotted key: [old, new]} for every value that differs between two (nested) config dicts."""
    out: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{where}.{key}" if where else key
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, name))
        elif a != b:
            out[name] = [a, b]
    return out


def describe_changes(changes: dict[str, list[Any]], limit: int = 6) -> str:
    text = "; ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in list(changes.items())[:limit])
    return text + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")


def checkpoint_paths(workdir: str | Path) -> list[Path]:
    """A work directory's resumable checkpoints, oldest first."""
    return sorted((Path(workdir) / CHECKPOINTS).glob("step_*.pt"))


def origin_checkpoint(init_from: str | Path) -> Path:
    """The checkpoint `--init-from` names: a work directory's newest checkpoint, or a checkpoint file."""
    path = Path(init_from)
    if path.is_dir():
        found = checkpoint_paths(path)
        if not found:
            raise FileNotFoundError(f"--init-from {init_from}: no {CHECKPOINTS}/step_*.pt in this work directory")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"--init-from {init_from}: no such work directory or checkpoint file")
    return path


class Workdir:
    """A trainer's resumable state, and the one policy both trainers follow (../ARCHITECTURE.md).

    Layout: WORKDIR/checkpoints/step_XXXXXXXX.pt (the newest `keep`), WORKDIR/metrics.jsonl and WORKDIR/config.json:
    the run's identity (`recipe`: the config values that change the weights; `data`: what it trains on), its
    resolved config, the code versions it ran under, its `--init-from` origin, and `finished` once the final
    artefact is written. `start` decides where training begins:

    - checkpoints of the same identity, run not finished: resume (a changed code version is recorded);
    - checkpoints of another identity, or of a finished run started again (a forced rerun): the directory is set
      aside as WORKDIR.set-aside-<time> (kept, named in the log) and training starts afresh, so a DAG rerun after a
      hyperparameter change just works and a forced retrain really retrains;
    - no checkpoint: `--init-from`'s checkpoint when given, else step 0.

    Rank 0 decides and writes; every rank then reads the same checkpoint. While open, rank 0 holds an exclusive
    flock on WORKDIR.lock, so a second live trainer of the same directory is refused with the holder's name.
    """

    def __init__(self, path: str | Path, identity: dict[str, Any], dist: Dist, *, keep: int = 1) -> None:
        self.path, self.identity, self.dist, self.keep = Path(path), identity, dist, keep
        self.info: dict[str, Any] = {}
        self.resumed_from: Path | None = None  # set by `start`: the own checkpoint resumed, or
        self.origin: Path | None = None  # --init-from's checkpoint
        self._lock: Any = None
        self._origin_state: dict[str, Any] | None = None

    # -- the lock -------------------------------------------------------------------------------------------

    def __enter__(self) -> Workdir:
        if self.dist.is_main:
            import fcntl
            import socket

            lock = self.path.with_name(self.path.name + ".lock")
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = lock.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise WorkdirBusy(f"{self.path} is in use by another live trainer ({holder}); wait for it to end "
                                  "or stop it (e.g. scancel its job), then rerun") from None
            handle.seek(0)
            handle.truncate()
            job = os.environ.get("SLURM_JOB_ID")
            handle.write(f"host {socket.gethostname()}, pid {os.getpid()}" + (f", SLURM job {job}" if job else ""))
            handle.flush()
            self._lock = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the flock
            self._lock = None

    # -- where to start --------------------------------------------------------------------------------------

    def start(self, config: dict[str, Any], init_from: str | Path | None = None,
              facts: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Apply the policy; returns the checkpoint to start from (None: step 0). `config` is the resolved config;
        `facts` are recorded beside it in config.json (e.g. SpidR's resolved schedule)."""
        note = None
        if self.dist.is_main:
            note = self._decide(config, init_from, facts or {})
        self.dist.barrier()
        self.info = json.loads((self.path / CONFIG_JSON).read_text())
        self.resumed_from, self.origin = self.latest(), None
        if self.resumed_from is not None:
            state = load_checkpoint(self.resumed_from)
            what = f"resumed from {self.resumed_from} at step {state['step']}"
        elif init_from is not None:
            self.origin = origin_checkpoint(init_from)
            state = self._origin_state or load_checkpoint(self.origin)
            if "optimizer" not in state:
                raise ConfigError(f"--init-from {self.origin}: a final checkpoint without optimizer state; give "
                                  "the run's work directory or one of its checkpoints/step_*.pt")
            what = f"initialised from {self.origin} at step {state['step']}"
        else:
            state, what = None, "starting at step 0"
        if self.dist.is_main:
            print(f"{self.path}: {note + '; ' if note else ''}{what}", file=sys.stderr)
        return state

    def _decide(self, config: dict[str, Any], init_from: str | Path | None, facts: dict[str, Any]) -> str | None:
        """Rank 0: set aside what must not be resumed, then write config.json; returns what was done, for the log."""
        note = None
        record = self._read_record()
        if self.latest() is not None:
            changes = config_changes({k: record.get(k) for k in self.identity}, self.identity)
            if changes:
                note = self.set_aside(f"checkpoints of another recipe or data ({describe_changes(changes)})")
            elif record.get("finished"):
                note = self.set_aside("a finished run started again (a forced rerun) starts afresh")
        (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        record = self._read_record() if self.latest() is not None else {}
        versions = record.get("code_versions") or []
        version = code_version()
        if not versions or versions[-1]["version"] != version:
            step = int(self.latest().stem.removeprefix("step_")) if self.latest() is not None else 0
            if versions:
                note = f"resuming under code {version} (the run so far: {versions[-1]['version']})"
            versions = [*versions, {"version": version, "from_step": step}]
        origin = record.get("init_from")
        if self.latest() is None and init_from is not None:
            checkpoint = origin_checkpoint(init_from)
            state = self._origin_state = load_checkpoint(checkpoint)  # read once: `start` uses it on rank 0
            old = state.get("config") or state.get("train_config") or {}
            origin = {"checkpoint": str(checkpoint.resolve()), "step": int(state["step"]),
                      "changed": config_changes(old, config)}
        atomic_write_json(self.path / CONFIG_JSON, {**self.identity, "config": config, **facts,
                                                    "code_versions": versions, "init_from": origin, "finished": None})
        return note

    def _read_record(self) -> dict[str, Any]:
        path = self.path / CONFIG_JSON
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}  # none, or unreadable: treated as another recipe (the directory is set aside, not reused)
        return record if isinstance(record, dict) else {}

    def set_aside(self, why: str) -> str:
        """Rename the work directory out of the way (nothing is deleted); returns the log line."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.set-aside-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.set-aside-{stamp}-{n}")
        self.path.rename(target)
        self.path.mkdir()
        return f"{why}: the old work directory is kept as {target}"

    # -- checkpoints -----------------------------------------------------------------------------------------

    def latest(self) -> Path | None:
        found = checkpoint_paths(self.path)
        return found[-1] if found else None

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Rank 0 writes checkpoints/step_XXXXXXXX.pt (atomically) and keeps the newest `keep`; all ranks wait."""
        path = self.path / CHECKPOINTS / f"step_{step:08d}.pt"
        if self.dist.is_main:
            save_checkpoint(state, path)
            for old in checkpoint_paths(self.path)[:-self.keep]:
                old.unlink(missing_ok=True)
        self.dist.barrier()
        return path

    @property
    def init_from(self) -> dict[str, Any] | None:
        return self.info.get("init_from")

    def last_good(self) -> Path | None:
        """What a diverged run can continue from: the newest checkpoint, else --init-from's."""
        return self.latest() or self.origin

    def finish(self, step: int) -> None:
        """Record that the final artefact is written: starting this run again is a forced rerun."""
        if self.dist.is_main:
            self.info["finished"] = {"step": step, "code_version": code_version(),
                                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_json(self.path / CONFIG_JSON, self.info)


def reapply_optimizer_settings(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimiser's saved state but keep this run's hyperparameters (betas, eps, weight decay): the saved
    values are the origin's, which `--init-from` may have changed. The learning rate is set by the loop each step."""
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, fresh, strict=True):
        group.update(settings)


def retry_advice(module: str, argv: list[str], config: dict[str, Any], changes: dict[str, Any],
                 err: TrainingDiverged, lr: float) -> TrainingDiverged:
    """`err` with the command that continues from its last good checkpoint, in a new work directory named after
    the new learning rate, with `changes` applied to the resolved `config` (`module`: the entry point, shell-quoted;
    `argv`: the trainer's own arguments)."""
    words, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in ("--workdir", "--config", "--init-from"):
            if flag == "--workdir":
                value = argv[i].split("=", 1)[1] if "=" in argv[i] else argv[i + 1]
                workdir = Path(value)
            i += 1 if "=" in argv[i] else 2
            continue
        words.append(argv[i])
        i += 1
    new_workdir = workdir.with_name(f"{workdir.name}-lr{lr:g}")
    words += ["--workdir", str(new_workdir), "--config", json.dumps(merged(config, changes), sort_keys=True)]
    if err.last_checkpoint is not None:
        words += ["--init-from", str(err.last_checkpoint)]
    start = "continue from it" if err.last_checkpoint else "start again"
    return TrainingDiverged(f"{err}\nTo {start} with half the learning rate in a new work directory:\n  "
                            f"python -m {module} {shlex.join(words)}",
                            step=err.step, last_checkpoint=err.last_checkpoint)


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied, nested dicts merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
