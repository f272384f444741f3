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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from common.artefacts import load_torch
from common.config import ConfigError
from common.io import atomic_write, atomic_write_text

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


class FiniteGuard:
    """Counts steps with a NaN/Inf loss or gradient norm on the device (no host sync per step); `check` raises."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.bad = torch.zeros((), device=device)
        self.good_step = step  # the last step known to be finite

    def update(self, *values: torch.Tensor) -> None:
        with torch.no_grad():
            for v in values:
                self.bad += (~torch.isfinite(v.detach())).any().float()

    def check(self, step: int, dist: Dist, last_checkpoint: Path | None, advice: str) -> None:
        """Raise TrainingDiverged if any rank saw a non-finite value since the last check (call before saving)."""
        if dist.all_reduce(self.bad.clone()).item() > 0:
            raise TrainingDiverged(
                f"loss became NaN/Inf between step {self.good_step} and step {step}; stopping without saving. "
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
# --init-from: a new run from another run's checkpoint, with changed values


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


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied, nested dicts merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def init_record(origin: Path, state: dict[str, Any], changes: dict[str, list[Any]]) -> dict[str, Any]:
    """What a run started with --init-from records (checkpoint, metrics, provenance): its origin and changes."""
    return {"checkpoint": str(origin.resolve()), "step": int(state["step"]), "changed": changes}


def retry_command(module: str, args: list[tuple[str, str | None]], config: dict[str, Any],
                  changes: dict[str, Any], workdir: str | Path, init_from: Path | None) -> str:
    """The command line that starts a new work directory from `init_from` with `changes` applied to `config`."""
    words = ["python", "-m", module]
    for flag, value in args:
        if value is not None:
            words += [flag, value]
    words += ["--workdir", str(workdir), "--config", json.dumps(merged(config, changes), sort_keys=True)]
    if init_from is not None:
        words += ["--init-from", str(init_from)]
    return shlex.join(words)


def retry_workdir(workdir: str | Path, lr: float) -> Path:
    """A sibling work directory named after the new learning rate, e.g. work/lm/x-lr0.001."""
    workdir = Path(workdir)
    return workdir.with_name(f"{workdir.name}-lr{lr:g}")


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """In a trainer's main(): a TrainingStopped becomes `error: ...` on stderr and its exit code; teardown after."""
    try:
        yield
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    finally:
        teardown()

