"""common.launch: torchrun / srun command lines, the stop before a SLURM time limit, exit 75; the wall-clock stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import launch
from common.runtime import EXIT_INTERRUPTED, StopSignals

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, seconds", [("0:45", 45), ("12:34", 754), ("1:02:03", 3723), ("2-00:00:05", 172805),
                                           ("1-01:00:00", 90000), ("UNLIMITED", None), ("NOT_SET", None)])
def test_time_left_from_squeue(text: str, seconds: float | None) -> None:
    assert launch.parse_time_left(text) == seconds


def test_stop_margin_is_five_minutes_or_half() -> None:
    assert launch.stop_after(24 * 3600) == 24 * 3600 - 300
    assert launch.stop_after(120) == 60
    assert launch.stop_after(0) == 0


def test_gpus_per_node() -> None:
    assert launch.gpus_per_node(1, 4, "") == 4
    assert launch.gpus_per_node(2, 0, "gpu:8") == 8
    assert launch.gpus_per_node(2, 0, "gpu:h100:8") == 8
    assert launch.gpus_per_node(1, 0, "gpu") == 1
    with pytest.raises(launch.LaunchError, match="gres: 'gpu:K'"):
        launch.gpus_per_node(2, 16, "")
    with pytest.raises(launch.LaunchError, match="gpu:TYPE:K"):
        launch.gpus_per_node(2, 0, "gpu:8:h100")


def test_one_node_is_standalone_torchrun() -> None:
    cmd = launch.command(1, 0, 2, "lm.train", ["--units", "u"], job_id=None, hosts=[], port=None)
    assert cmd == ["torchrun", "--standalone", "--nproc-per-node=1", "-m", "lm.train", "--units", "u"]


def test_nodes_run_one_torchrun_each_through_srun_with_a_c10d_rendezvous_on_the_first() -> None:
    cmd = launch.command(2, 8, 32, "spidr.train", ["--out", "x"], job_id="42", hosts=["gpu07", "gpu09"], port=29999)
    srun, torchrun = cmd[:cmd.index("torchrun")], cmd[cmd.index("torchrun"):]
    assert srun == ["srun", "--jobid=42", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=32",
                    "--kill-on-bad-exit=1", "--gpus-per-node=8"]
    assert torchrun == ["torchrun", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-id=42",
                        "--rdzv-endpoint=gpu07:29999", "-m", "spidr.train", "--out", "x"]
    with pytest.raises(launch.LaunchError, match="needs a SLURM job"):
        launch.command(2, 0, 1, "lm.train", [], job_id=None, hosts=[], port=None)
    with pytest.raises(launch.LaunchError, match="has 1 node"):
        launch.command(2, 0, 1, "lm.train", [], job_id="7", hosts=["a"], port=1)


def _fake_slurm(tmp_path: Path, torchrun: str) -> dict[str, str]:
    """squeue, scontrol and torchrun stand-ins on PATH; torchrun records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"squeue": 'echo "node1|1:00:00"', "scontrol": "echo node1",
               "torchrun": f'echo "$@" > {tmp_path}/argv\necho "$TORCHELASTIC_SIGNALS_TO_HANDLE" > {tmp_path}/env\n'
                           + torchrun}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "SLURM_JOB_ID": "5"}


def _launch(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.launch", "--nodes", "1", "--gpus", "0", "lm.train",
                           "--units", "u"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_in_a_slurm_job_the_trainer_stops_before_the_limit(tmp_path: Path) -> None:
    out = _launch(_fake_slurm(tmp_path, "exit 0"))
    assert out.returncode == 0, out.stderr
    # One hour left: stop 300 s before it.
    assert (tmp_path / "argv").read_text().split() == ["--standalone", "--nproc-per-node=1", "-m", "lm.train",
                                                       "--units", "u", "--stop-after-seconds", "3300"]
    assert "SIGUSR1" in (tmp_path / "env").read_text()


def test_a_failure_after_a_stop_signal_is_exit_75_and_other_failures_pass_through(tmp_path: Path) -> None:
    # The launcher records SIGTERM (what SLURM sends every process of the step) and waits for torchrun.
    signalled = _launch(_fake_slurm(tmp_path, "kill -TERM $PPID; sleep 0.5; exit 1"))
    assert signalled.returncode == EXIT_INTERRUPTED, signalled.stderr
    assert "after SIGTERM" in signalled.stderr
    (tmp_path / "crash").mkdir()
    crashed = _launch(_fake_slurm(tmp_path / "crash", "exit 3"))
    assert crashed.returncode == 3, crashed.stderr


def test_several_nodes_outside_slurm_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([sys.executable, "-m", "common.launch", "--nodes", "2", "lm.train"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "nodes=2 needs a SLURM job" in out.stderr, out.stderr


def test_wall_clock_stop() -> None:
    with StopSignals(watch_parent=False, stop_after_s=0) as stop:
        assert stop.requested() == "--stop-after-seconds 0 reached"
    with StopSignals(watch_parent=False, stop_after_s=3600) as stop:
        assert stop.requested() is None
    with pytest.raises(ValueError, match="--stop-after-seconds must be >= 0"):
        StopSignals(stop_after_s=-1)
    assert launch.EXIT_INTERRUPTED == EXIT_INTERRUPTED
