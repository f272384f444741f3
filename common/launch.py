"""The training rules' launcher: torchrun on one node, or one torchrun per node through srun (c10d rendezvous).

    python -m common.launch --nodes N --gpus G [--gres GRES] [--threads T] MODULE [ARGS...]

- One node (`--nodes 1`): `torchrun --standalone --nproc-per-node max(G, 1) -m MODULE ARGS`, as on a laptop.
- N > 1 nodes (inside a SLURM job): `srun --nodes N --ntasks-per-node 1 torchrun --nnodes N ... --rdzv-backend c10d
  --rdzv-endpoint FIRST_NODE:PORT`, the first node from `scontrol show hostnames`, a free port on it (the batch
  script runs there). GPUs per node come from `--gres gpu[:type]:K` (sbatch's `--gpus` is a job total).
- Inside a SLURM job, the trainer gets `--stop-after-seconds` = the job's time left minus a margin
  (min(300 s, half of it): start-up counts against it): it checkpoints at a step boundary and exits 75 before
  SLURM's SIGTERM + KillWait, whatever reaches which process. Snakemake resubmits the job (the SLURM profile's
  preemptible-retries) and the trainer resumes from its workdir.

Exit status: the launched command's; 75 (EX_TEMPFAIL: retry) when it failed after a stop was due (that deadline,
or SIGTERM / SIGUSR1 / SIGINT here). Those signals are recorded, never forwarded: SLURM (time limit, preemption)
signals every process of the job step and Snakemake the rule's whole process group, so torchrun has them already
(and forwards them to its workers once; a second signal would cut its grace period short). Waiting keeps this
process, and so the SLURM step, alive until the workers have written their checkpoint.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

# common.runtime.EXIT_INTERRUPTED (not imported: that would load torch in the launcher as well).
EXIT_INTERRUPTED = 75
# The trainers also stop on SIGUSR1 (SLURM's --signal): torchrun forwards it to the workers like SIGTERM.
TORCHRUN_ENV = {"TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
MAX_MARGIN_S = 300.0


class LaunchError(RuntimeError):
    """A launch that cannot work as asked (e.g. several nodes outside a SLURM job)."""


# --- what a job runs on: the first lines of every job log, and the driver the CUDA wheels need -------------------

# Set by the workflow (workflow/rules/common.smk) for the jobs it runs: common.cli.run_main then starts each entry
# point's log with job_header(). torchrun's workers (RANK set) leave it to the launcher, which prints it once.
JOB_HEADER_ENV = "TEXTLESS_JOB_HEADER"
# The oldest NVIDIA Linux driver that runs a CUDA major release (CUDA's minor-version compatibility: the first
# driver of a major release runs all of its minor versions). torch's PyPI wheels pin CUDA 13 (constraints.txt).
MIN_DRIVER = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def torch_versions() -> tuple[str | None, str | None]:
    """(torch version, the CUDA version its wheel was built for), read from its files: no torch import (seconds)."""
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    spec = importlib.util.find_spec("torch")
    cuda = None
    if spec is not None and spec.submodule_search_locations:
        version_py = os.path.join(next(iter(spec.submodule_search_locations)), "version.py")
        try:
            with open(version_py) as f:
                match = re.search(r"^cuda(?:: [^=]+)? = '([\d.]+)'", f.read(), re.M)
            cuda = match.group(1) if match else None
        except OSError:
            cuda = None
    return version, cuda


def nvidia_driver(path: str = "/proc/driver/nvidia/version") -> str | None:
    """The loaded NVIDIA kernel driver's version (from its /proc file), None without one."""
    try:
        with open(path) as f:
            match = re.search(r"Kernel Module(?: for [\w_]+)?\s+([\d.]+)", f.read())
        return match.group(1) if match else None
    except OSError:
        return None


def gpu_models() -> list[str]:
    """Models of the GPUs this process may use (CUDA_VISIBLE_DEVICES of the node's GPUs), from the driver's files."""
    models = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info) as f:
                match = re.search(r"^Model:\s+(.+)$", f.read(), re.M)
        except OSError:
            continue
        models.append(match.group(1).strip() if match else "unknown")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(part.isdigit() for part in visible.split(",") if part):
        models = [models[int(i)] for i in visible.split(",") if i and int(i) < len(models)]
    return models


def job_header() -> str:
    """One line: host, SLURM job, GPUs, driver, torch + CUDA and code versions (no torch import, no subprocess but
    `git describe`)."""
    from common.io import code_version

    torch, cuda = torch_versions()
    job = os.environ.get("SLURM_JOB_ID", "-")
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job += f"_{os.environ['SLURM_ARRAY_TASK_ID']}"
    models = gpu_models()
    gpus = f"{len(models)} ({', '.join(sorted(set(models)))})" if models else "none"
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        gpus += f" CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
    return (f"job: host={socket.gethostname()} slurm_job={job} gpus={gpus} driver={nvidia_driver() or 'none'} "
            f"torch={torch or 'none'} cuda={cuda or 'cpu'} code={code_version()}")


def check_driver(driver: str | None, cuda: str | None) -> None:
    """A LaunchError when the node's driver is older than torch's CUDA wheels need (torch would otherwise warn and
    run on the CPU, hours slower); nothing without a driver or with a CPU build."""
    if driver is None or cuda is None:
        return
    needed = MIN_DRIVER.get(_version_tuple(cuda)[0])
    if needed is not None and _version_tuple(driver) < _version_tuple(needed):
        raise LaunchError(
            f"NVIDIA driver {driver} on {socket.gethostname()} is older than {needed}, which the installed torch "
            f"(CUDA {cuda} wheels) needs: ask for nodes with a newer driver (the rule's `constraint` resource, see "
            "slurm/README.md), or install a torch built for the CUDA the driver supports (nvidia-smi shows it)")


def preempt_time(job_id: str) -> str | None:
    """When SLURM started preempting this job (scontrol's PreemptTime), or None when it is not being preempted."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    match = re.search(r"\bPreemptTime=(\S+)", shown.stdout)
    return None if match is None or match.group(1) in ("None", "Unknown") else match.group(1)


def requeue_if_preempted(job_id: str) -> bool:
    """Put this job back in the queue when SLURM is preempting it (its PreemptTime is set), and say so.

    The executor plugin (2.8) keeps polling a job whose final state is PREEMPTED as if it still ran, so on a cluster
    with PreemptMode=CANCEL the workflow would wait forever. Requeued instead (the profile submits with --requeue),
    the same job id runs again and resumes from work/; PreemptMode=REQUEUE does this by itself. A time limit or
    scancel sets no PreemptTime: those end CANCELLED / TIMEOUT, which the plugin reports and Snakemake retries.
    """
    when = preempt_time(job_id)
    if when is None:
        return False
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"common.launch: warning: SLURM job {job_id} is being preempted and `scontrol requeue` failed "
              f"({(done.stderr or done.stdout).strip()}): it ends PREEMPTED, which the executor plugin does not "
              "report; restart Snakemake if it waits on it (slurm/README.md)", file=sys.stderr)
        return False
    print(f"common.launch: SLURM job {job_id} is being preempted (PreemptTime={when}): requeued it; it "
          "resumes from the work directory when it runs again", file=sys.stderr)
    return True


# Seconds before the end of a preempted job's grace time at which it is requeued even if its trainer still saves.
REQUEUE_MARGIN_S = 10


def requeue_deadline(job_id: str) -> float:
    """When (time.monotonic()) a job SLURM is preempting must be requeued at the latest: a few seconds before its
    grace time ends (preemption moves its end to now + GraceTime), or now when that end is unknown; math.inf when
    it is not being preempted."""
    if preempt_time(job_id) is None:
        return math.inf
    try:
        left = slurm_job(job_id)[1]
    except LaunchError:
        left = None
    return time.monotonic() + max((left or 0.0) - REQUEUE_MARGIN_S, 0.0)


def wait_trainer(proc: subprocess.Popen, job_id: str | None, received: list[str]) -> int:
    """Wait for the trainer; when a stop signal comes from SLURM preempting the job, requeue the job (see
    requeue_if_preempted) once the trainer has saved and stopped, or before the grace time runs out if it has not:
    a job killed before `scontrol requeue` ends PREEMPTED. (`scontrol requeue` ends the job at once, so it is not
    asked for sooner: the trainer keeps the whole grace time to save.)"""
    requeue_by: float | None = None  # None: no stop signal checked yet; math.inf: nothing (more) to requeue
    while True:
        try:
            code = proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            pass
        if received and job_id is not None:
            if requeue_by is None:
                requeue_by = requeue_deadline(job_id)
            if time.monotonic() >= requeue_by:
                requeue_if_preempted(job_id)
                requeue_by = math.inf
    if received and job_id is not None and requeue_by != math.inf:
        requeue_if_preempted(job_id)
    return code


def job_start() -> None:
    """Print the job header to stderr (the rule's log) and refuse a GPU node whose driver is too old for torch's
    CUDA; only in jobs the workflow runs (JOB_HEADER_ENV), once per job (not in torchrun's workers)."""
    if not os.environ.get(JOB_HEADER_ENV) or os.environ.get("RANK") is not None:
        return
    print(job_header(), file=sys.stderr, flush=True)
    check_driver(nvidia_driver(), torch_versions()[1])


def gpus_per_node(nodes: int, gpus: int, gres: str) -> int:
    """GPUs on each node: K from a gres `gpu[:type]:K`, else `gpus` (a job total, so one node only)."""
    match = re.fullmatch(r"gpu(?::[A-Za-z][\w.\-]*)?(?::(\d+))?", gres.strip()) if gres.strip() else None
    if gres.strip() and match is None:
        if gres.strip().startswith("gpu"):
            raise LaunchError(f"gres {gres!r}: expected gpu, gpu:K or gpu:TYPE:K")
        return gpus  # another generic resource
    if match is not None:
        return int(match.group(1) or 1)
    if nodes > 1 and gpus > 0:
        raise LaunchError(f"nodes={nodes} with gpu={gpus}: SLURM's --gpus is a job total; ask for GPUs per node "
                          f"with gres: 'gpu:K' (and gpu: 0), e.g. slurm/profiles/2x8/config.yaml")
    return gpus


def parse_time_left(text: str) -> float | None:
    """squeue's %L ([D-][HH:]MM:SS) in seconds; None for UNLIMITED / NOT_SET / INVALID."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if match is None:
        return None
    hours, minutes, seconds = ([0, 0, 0] + [int(x) for x in match.group(2).split(":")])[-3:]
    return float(int(match.group(1) or 0) * 86400 + hours * 3600 + minutes * 60 + seconds)


def stop_after(time_left_s: float) -> float:
    """When the trainer should stop (seconds from now): before the limit by min(300 s, half of what is left).

    The trainer counts from the end of its own start-up (imports, data), so a short job needs a wide margin.
    """
    return max(0.0, time_left_s - min(MAX_MARGIN_S, time_left_s / 2))


def slurm_job(job_id: str) -> tuple[list[str], float | None]:
    """The job's node names (first = where the batch script runs) and its time left in seconds (None: unlimited)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N|%L"], capture_output=True, text=True)
    if out.returncode != 0 or "|" not in out.stdout:
        raise LaunchError(f"squeue -j {job_id} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    nodelist, left = out.stdout.strip().splitlines()[0].split("|", 1)
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split(), parse_time_left(left)


def rendezvous_port(first_node: str, job_id: str) -> int:
    """A free port on the first node when we run there (the batch script does), else one derived from the job."""
    if first_node.split(".")[0] != socket.gethostname().split(".")[0]:
        return 29500 + int(job_id) % 10000
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def command(nodes: int, nproc: int, threads: int, module: str, args: Sequence[str], *, job_id: str | None,
            hosts: Sequence[str], port: int | None) -> list[str]:
    """The torchrun (or srun + torchrun) command line."""
    if nodes == 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={max(nproc, 1)}", "-m", module, *args]
    if job_id is None:
        raise LaunchError(f"nodes={nodes} needs a SLURM job (no SLURM_JOB_ID): one torchrun per node runs through "
                          "srun; run it with `snakemake --profile slurm`, or set nodes to 1")
    if len(hosts) < nodes:
        raise LaunchError(f"nodes={nodes} but SLURM job {job_id} has {len(hosts)} node(s): {' '.join(hosts)}")
    # The plugin clears the job's SLURM_* variables before running the rule: the step states what it needs.
    srun = ["srun", f"--jobid={job_id}", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={threads}", "--kill-on-bad-exit=1"]
    if nproc > 0:
        srun.append(f"--gpus-per-node={nproc}")
    return [*srun, "torchrun", f"--nnodes={nodes}", f"--nproc-per-node={max(nproc, 1)}", "--rdzv-backend=c10d",
            f"--rdzv-id={job_id}", f"--rdzv-endpoint={hosts[0]}:{port}", "-m", module, *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1, help="nodes (one torchrun each)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of the job on one node (0: one CPU process)")
    parser.add_argument("--gres", default="", help="SLURM gres per node, e.g. gpu:8 (sets the GPUs per node)")
    parser.add_argument("--threads", type=int, default=1, help="CPUs per node for the srun step")
    parser.add_argument("module", help="the trainer module, e.g. spidr.train")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    opts = parser.parse_args(argv)
    if opts.nodes < 1:
        parser.error(f"--nodes must be >= 1, got {opts.nodes}")
    try:
        return launch(opts.nodes, gpus_per_node(opts.nodes, opts.gpus, opts.gres), opts.threads, opts.module,
                      list(opts.args))
    except LaunchError as err:
        print(f"common.launch: error: {err}", file=sys.stderr)
        return 2


# --- torchrun's stderr: its workers' lines as they are, its own ChildFailedError dump as one line -----------------
# (issue 23, case 15; kept apart from the launcher's logic above). A worker that fails prints its own one-line
# `error: ...` (common.cli.run_main); torchrun then adds a traceback of its own and a report of the failed ranks,
# which say nothing more. Both are replaced by one line naming the rank and exit code; any other traceback (a bug
# in a worker) passes through whole.
CHILD_FAILED = b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError"
AGENT_FAILED = re.compile(rb"elastic/multiprocessing/api\.py:\d+\] failed \(exitcode")
RULE = b"=" * 20


def write_stderr(data: bytes) -> None:
    out = getattr(sys.stderr, "buffer", None)
    if out is not None:
        out.write(data)
    else:  # a replaced sys.stderr (tests)
        sys.stderr.write(data.decode(errors="replace"))
    sys.stderr.flush()


def relay_stderr(source: BinaryIO, sink: Callable[[bytes], None], module: str) -> None:
    """Copy `source` to `sink` line by line (bytes: progress bars' carriage returns pass as they are), dropping
    torchrun's ChildFailedError traceback and report for one summary line."""
    held: list[bytes] = []  # a traceback, until its exception line says whose it is
    rules = 0  # rule lines of the failure report seen while dropping it (it ends at the second)
    facts: dict[str, str] = {}

    def summary() -> None:
        sink(f"common.launch: {module} failed on rank {facts.get('rank', '?')} (exit code "
             f"{facts.get('exitcode', '?')}); its error is above\n".encode())

    for line in iter(source.readline, b""):
        if rules:
            found = re.match(rb"\s*(rank|exitcode)\s*:\s*(-?\d+)", line)
            if found:
                facts.setdefault(found[1].decode(), found[2].decode())
            if line.startswith(RULE):
                rules += 1
                if rules == 3:
                    rules = 0
                    summary()
            continue
        if held:
            if line[:1] in (b" ", b"\t"):
                held.append(line)
                continue
            if line.startswith(CHILD_FAILED):
                held, rules = [], 1
                continue
            sink(b"".join(held))
            held = []
        if line.startswith(b"Traceback (most recent call last):"):
            held = [line]
        elif not AGENT_FAILED.search(line):
            sink(line)
    if held:
        sink(b"".join(held))
    if rules:
        summary()


def launch(nodes: int, nproc: int, threads: int, module: str, args: list[str]) -> int:
    """Run the trainer (see the module docstring); returns the exit status."""

    job_start()
    if nproc > 0:  # a GPU job: refuse a driver torch's CUDA cannot use, also outside the workflow
        check_driver(nvidia_driver(), torch_versions()[1])
    job_id = os.environ.get("SLURM_JOB_ID")
    hosts: list[str] = []
    deadline = None
    if job_id is not None:
        hosts, left = slurm_job(job_id)
        if left is not None:
            seconds = stop_after(left)
            args = [*args, "--stop-after-seconds", f"{seconds:.0f}"]
            deadline = time.monotonic() + seconds
            print(f"common.launch: SLURM job {job_id} has {left:.0f} s left: the trainer stops after {seconds:.0f} s",
                  file=sys.stderr)
    port = rendezvous_port(hosts[0], job_id) if nodes > 1 and hosts and job_id else None
    cmd = command(nodes, nproc, threads, module, args, job_id=job_id, hosts=hosts, port=port)
    print(f"common.launch: {shlex.join(cmd)}", file=sys.stderr, flush=True)

    received: list[str] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: received.append(signal.Signals(signum).name))
    proc = subprocess.Popen(cmd, env={**os.environ, **TORCHRUN_ENV}, stderr=subprocess.PIPE)
    relay = threading.Thread(target=relay_stderr, args=(proc.stderr, write_stderr, module), daemon=True)
    relay.start()
    code = wait_trainer(proc, job_id, received)
    relay.join(timeout=10)
    due = received or (deadline is not None and time.monotonic() >= deadline)
    if code != 0 and due:
        why = ", ".join(received) if received else "the stop before the time limit"
        print(f"common.launch: exit {code} after {why}: exit {EXIT_INTERRUPTED} (retry to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
