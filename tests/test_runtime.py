"""common.runtime: metrics log, checkpoints and RNG state, perplexity, divergence guard (and bf16 skips), stop
signals, retry advice; and (slow) no torchrun worker outlives a killed workflow process group."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.runtime import (
    FiniteGuard,
    MetricsLog,
    StopSignals,
    TrainingDiverged,
    choose_precision,
    config_changes,
    load_checkpoint,
    perplexity,
    restore_rng_states,
    retry_advice,
    rng_state,
    save_checkpoint,
    setup_distributed,
)

REPO = Path(__file__).resolve().parent.parent


def test_metrics_log_appends_and_drops_records_after_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, 0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    MetricsLog(path, 2).write({"step": 3, "loss": 0.5})
    assert [json.loads(ln) for ln in path.read_text().splitlines()] == [
        {"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}, {"loss": 0.5, "step": 3}]
    MetricsLog(path, 0)
    assert path.read_text() == ""
    MetricsLog(tmp_path / "other.jsonl", 0, enabled=False).write({"step": 1})  # not rank 0: nothing written
    assert not (tmp_path / "other.jsonl").exists()


def test_checkpoint_round_trip_restores_every_generator(tmp_path):
    device = torch.device("cpu")
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": [rng_state(device)], "w": torch.ones(3)}, tmp_path / "c.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state = load_checkpoint(tmp_path / "c.pt")  # weights_only=True: RNG states are stored as tensors and numbers
    dist = setup_distributed("cpu")
    assert restore_rng_states(state["rng"], dist)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert not restore_rng_states([state["rng"][0]] * 2, dist)  # saved by 2 ranks: not for a single process
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


def test_perplexity_is_exp_entropy_per_row():
    assert float(perplexity(np.array([2.0, 1.0, 0.0, 2.0]))) == pytest.approx(np.exp(-(0.4 * np.log(0.4) * 2 +
                                                                                          0.2 * np.log(0.2))))
    rows = perplexity(torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert rows.tolist() == pytest.approx([4.0, 1.0, 1.0])


def test_precision_and_device_choices():
    assert choose_precision("auto", torch.device("cpu")).name == "fp32"
    bf16 = choose_precision("bf16", torch.device("cpu"))
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="'precision'"):
        choose_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="'device'"):
        setup_distributed("tpu")


def test_finite_guard_names_the_steps_and_the_last_good_checkpoint():
    dist = setup_distributed("cpu")
    guard = FiniteGuard(torch.device("cpu"), step=4)
    guard.update(torch.tensor(1.0), torch.tensor(2.0))
    guard.check(6, dist, Path("w/step_6.pt"), "advice")
    guard.update(torch.tensor(1.0), torch.tensor(float("inf")))  # a finite loss with an infinite gradient norm
    expected = r"between step 6 and step 8.*Last good checkpoint: w/step_6\.pt\. advice"
    with pytest.raises(TrainingDiverged, match=expected) as err:
        guard.check(8, dist, Path("w/step_6.pt"), "advice")
    assert err.value.exit_code == 3 and err.value.last_checkpoint == Path("w/step_6.pt")


def test_stop_signals_are_recorded_then_the_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(watch_parent=False) as stop:
        assert stop.requested() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested() == "SIGUSR1"
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_bf16_guard_skips_non_finite_steps_then_stops_after_too_many_in_a_row():
    """As the official code's GradScaler: a step with NaN/Inf gradients is skipped, not fatal; only a run of more
    than `skip_limit` consecutive skips stops the run."""
    dist = setup_distributed("cpu")
    guard = FiniteGuard(torch.device("cpu"), step=0, skip_limit=2)
    nan, ok = torch.tensor(float("nan")), torch.tensor(1.0)
    assert [guard.allow_step(ok, g) for g in (ok, nan, nan, ok, nan)] == [True, False, False, True, False]
    guard.check(5, dist, None, "advice")  # never more than 2 in a row: no stop
    assert guard.take_skipped() == 3 and guard.take_skipped() == 0
    assert [guard.allow_step(ok, nan) for _ in range(2)] == [False, False]  # 3 in a row with the one before
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf on more than 2 consecutive steps \(each skipped\)"):
        guard.check(7, dist, None, "advice")
    strict = FiniteGuard(torch.device("cpu"), step=0)  # fp32: the first NaN stops at the next check
    assert strict.allow_step(ok, nan)
    with pytest.raises(TrainingDiverged, match="loss became NaN/Inf"):
        strict.check(1, dist, None, "advice")


def test_retry_advice_replaces_the_work_directory_and_config_and_adds_init_from():
    old = {"lr": 1.0, "optim": {"lr": 5e-4, "betas": [0.9, 0.98]}, "seed": 0}
    new = {"lr": 1.0, "optim": {"lr": 2.5e-4, "betas": [0.9, 0.98]}, "seed": 1}
    assert config_changes(old, new) == {"optim.lr": [5e-4, 2.5e-4], "seed": [0, 1]}
    err = TrainingDiverged("diverged", step=5, last_checkpoint=Path("work/x/s.pt"))
    argv = ["--manifest", "my data/m.tsv", "--workdir", "work/x", "--config", "{}", "--init-from", "elsewhere"]
    advice = retry_advice("spidr.train", argv, {"preset": "tiny", "optim": {"eps": 1e-6}}, {"optim": {"lr": 1e-4}},
                          err, 1e-4)
    assert shlex.split(str(advice).splitlines()[-1]) == [
        "python", "-m", "spidr.train", "--manifest", "my data/m.tsv", "--workdir", "work/x-lr0.0001", "--config",
        '{"optim": {"eps": 1e-06, "lr": 0.0001}, "preset": "tiny"}', "--init-from", "work/x/s.pt"]
    assert advice.exit_code == 3 and advice.last_checkpoint == Path("work/x/s.pt")


# ---------------------------------------------------------------------------------------------------------------
# No orphan outlives its workflow


def _live_processes_mentioning(marker: str) -> list[int]:
    """Processes (not zombies: their command line is empty) whose command line contains `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _rule_command(module: str, tmp_path: Path) -> tuple[str, Path, Path]:
    """The training rule's shell command (workflow/rules/*.smk, one process) for a long run on generated data."""
    work, out = tmp_path / "work", tmp_path / "out"
    launch = ("TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 "
              f"torchrun --standalone --nproc_per_node=1 -m {module}")
    if module == "lm.train":
        from lm.synthetic import write_markov_units

        units = write_markov_units(tmp_path / "units.parquet", num_utterances=40, vocab_size=16, min_len=10,
                                   max_len=60, successors=2, seed=0)
        config = {"preset": "tiny-opt", "context_length": 32, "batch_size": 4, "micro_batch_size": 4,
                  "max_steps": 100_000, "log_interval": 1, "checkpoint_interval": 100_000, "eval_interval": 100_000}
        args = f"--units {units} --workdir {work} --out {out}"
    else:
        from data.audio import write_wav
        from data.manifest import build_manifest

        rng = np.random.default_rng(0)
        for i in range(4):
            noise = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
            write_wav(tmp_path / "wav" / f"s{i % 2}-utt{i}.wav", noise)
        with open(os.devnull, "w") as quiet:
            build_manifest(tmp_path / "wav", tmp_path / "manifest.tsv", speaker="prefix", log=quiet)
        config = {"preset": "tiny", "max_steps": 100_000, "checkpoint_interval": 100_000,
                  "data": {"batch_samples": 32_000}}
        args = f"--manifest {tmp_path / 'manifest.tsv'} --workdir {work} --out {out} --threads 1"
    command = f"{launch} {args} --config {shlex.quote(json.dumps(config))} > {tmp_path / 'log'} 2>&1"
    return command, work, out


@pytest.mark.slow
@pytest.mark.parametrize("module", ["lm.train", "spidr.train"])
def test_killing_the_workflow_process_group_leaves_no_worker(module, tmp_path):
    """kill -9 of the whole group (as when Snakemake is killed): torchrun's worker, in a session of its own, used
    to keep training and write the declared output ~20 s later, racing a rerun."""
    command, work, out = _rule_command(module, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # torchrun
    group = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not ((work / "metrics.jsonl").is_file() and len((work / "metrics.jsonl").read_text().splitlines()) >= 3):
            assert group.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        assert _live_processes_mentioning(str(work)), "no worker found"
        os.killpg(group.pid, signal.SIGKILL)
        killed = time.monotonic()
        group.wait()
        while _live_processes_mentioning(str(work)) and time.monotonic() - killed < 10:
            time.sleep(0.1)
        gone_after = time.monotonic() - killed
        assert not _live_processes_mentioning(str(work)), f"a worker outlived its process group by {gone_after:.1f} s"
        time.sleep(2.0)
        assert not out.exists()
        print(f"{module}: last worker gone {gone_after:.2f} s after kill -9 of the group", file=sys.stderr)
        log = (tmp_path / "log").read_text()
        assert "stopped at step" in log and "SIGTERM" in log, log[-3000:]  # it stopped at a step boundary ...
        saved = list(work.rglob("*.pt"))  # ... with a resumable checkpoint in its work directory
        assert saved and all(p.name.startswith(("checkpoint", "step_")) for p in saved)
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
        for pid in _live_processes_mentioning(str(work)):
            os.kill(pid, signal.SIGKILL)
