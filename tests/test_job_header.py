"""The first line of every job log (host, SLURM job, GPUs, driver, torch / CUDA, code version) and the check that a
GPU node's NVIDIA driver can run the pinned torch's CUDA wheels (common.launch.job_start), without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.launch import JOB_HEADER_ENV, LaunchError, check_driver, nvidia_driver, torch_versions

REPO = Path(__file__).resolve().parent.parent


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (JOB_HEADER_ENV, "RANK", "SLURM_JOB_ID")}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


def test_an_entry_point_run_by_the_workflow_starts_its_log_with_the_job_header() -> None:
    code = "import sys; from common.cli import run_main; run_main(lambda: print('work', file=sys.stderr))"
    done = _run(code, **{JOB_HEADER_ENV: "1", "SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    header, work = done.stderr.splitlines()
    assert header.startswith("job: host=") and " slurm_job=4242 " in header and work == "work", done.stderr
    torch, cuda = torch_versions()
    for field in ("gpus=", "driver=", f"torch={torch}", f"cuda={cuda or 'cpu'}", "code="):
        assert field in header, (field, header)
    # not outside the workflow, and not once per torchrun worker (the launcher prints it)
    assert _run(code).stderr.strip() == "work"
    assert _run(code, **{JOB_HEADER_ENV: "1", "RANK": "3"}).stderr.strip() == "work"


def test_the_header_costs_no_torch_import() -> None:
    done = _run("import sys; from common.launch import job_header; job_header(); print('torch' in sys.modules)")
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(("text", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue Sep 23 09:55:41 UTC 2025\n", "580.95.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n",
     "550.54.15"),
])
def test_the_driver_version_is_read_from_the_kernel_modules_file(tmp_path: Path, text: str, version: str) -> None:
    (tmp_path / "version").write_text(text)
    assert nvidia_driver(str(tmp_path / "version")) == version
    assert nvidia_driver(str(tmp_path / "missing")) is None


def test_a_driver_too_old_for_the_cuda_wheels_is_refused_naming_both() -> None:
    with pytest.raises(LaunchError, match=r"NVIDIA driver 550\.54\.15 on .* is older than 580\.65\.06, which the "
                                          r"installed torch \(CUDA 13\.0 wheels\) needs"):
        check_driver("550.54.15", "13.0")
    check_driver("580.95.05", "13.0")
    check_driver("535.104.05", "12.4")
    check_driver(None, "13.0")  # no NVIDIA driver: a CPU node, nothing to check
    check_driver("550.54.15", None)  # a CPU build of torch


def test_the_launcher_refuses_a_gpu_job_on_a_driver_too_old(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    import common.launch as launch

    monkeypatch.delenv(JOB_HEADER_ENV, raising=False)
    monkeypatch.setattr(launch, "nvidia_driver", lambda: "470.82.01")
    monkeypatch.setattr(launch, "torch_versions", lambda: ("2.14.1", "13.0"))
    monkeypatch.setattr(launch.subprocess, "Popen", lambda *a, **k: pytest.fail("torchrun started"))
    assert launch.main(["--gpus", "2", "lm.train", "--config", "{}"]) == 2
    assert "common.launch: error: NVIDIA driver 470.82.01" in capsys.readouterr().err


def _fake_scontrol(bin_dir: Path, preempt_time: str, requeue_rc: int = 0) -> Path:
    """An scontrol that shows a job with the given PreemptTime and records `scontrol requeue` calls."""
    bin_dir.mkdir()
    calls = bin_dir / "calls"
    (bin_dir / "scontrol").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        f'if [ "$1" = show ]; then echo "JobId=$3 JobName=x"; echo "   PreemptEligibleTime=2026-12-06T12:00:00 '
        f'PreemptTime={preempt_time}"; fi\n'
        f'if [ "$1" = requeue ]; then echo "requeue refused" >&2; exit {requeue_rc}; fi\n')
    (bin_dir / "scontrol").chmod(0o755)
    return calls


@pytest.mark.parametrize(("preempt_time", "requeue_rc", "requeued", "says"), [
    ("2026-12-06T12:30:00", 0, True, "is being preempted (PreemptTime=2026-12-06T12:30:00): requeued it"),
    ("2026-12-06T12:30:00", 1, False, "`scontrol requeue` failed (requeue refused): it ends PREEMPTED"),
    ("None", 0, False, None),  # a time limit or scancel: the plugin reports those, Snakemake retries
])
def test_a_preempted_training_job_requeues_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture, preempt_time: str, requeue_rc: int,
                                                  requeued: bool, says: str | None) -> None:
    from common.launch import requeue_if_preempted

    calls = _fake_scontrol(tmp_path / "bin", preempt_time, requeue_rc)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert requeue_if_preempted("4242") is requeued
    assert ("requeue 4242" in calls.read_text()) == (preempt_time != "None")
    err = capsys.readouterr().err
    assert (says in err) if says else err == ""


@pytest.mark.parametrize(("time_left", "requeued_while_saving"), [
    ("0:11", True),   # 11 s of grace left: requeued 10 s before its end, while the trainer still saves
    ("5:00", False),  # ample grace: requeued once the trainer has stopped
])
def test_a_preempted_job_is_requeued_after_the_checkpoint_or_before_the_grace_time_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, time_left: str, requeued_while_saving: bool) -> None:
    from common.launch import wait_trainer

    calls = _fake_scontrol(tmp_path / "bin", "2026-12-06T12:30:00")
    squeue = tmp_path / "bin" / "squeue"
    squeue.write_text(f"#!/bin/sh\necho 'vm|{time_left}'\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # The trainer "saves" for 4 s after SLURM's SIGTERM, then says whether the job was requeued meanwhile.
    saving = (f"import pathlib, sys, time; time.sleep(4); "
              f"sys.exit(7 if 'requeue' in pathlib.Path({str(calls)!r}).read_text() else 8)")
    proc = subprocess.Popen([sys.executable, "-c", saving])
    assert wait_trainer(proc, "4242", received=["SIGTERM"]) == (7 if requeued_while_saving else 8)
    assert calls.read_text().count("requeue 4242") == 1
