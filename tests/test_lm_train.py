"""Unit-LM training: config checks, schedule, learning, resume (bit-identical on CPU), budgets, the model dir."""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lm.pack
import lm.train
from common.cli import run_main
from common.runtime import EXIT_DIVERGED, EXIT_INTERRUPTED, TrainingInterrupted, checkpoint_paths
from lm.model import UnitVocab
from lm.synthetic import write_markov_units
from lm.train import TrainConfig, lr_at, train

REPO = Path(__file__).resolve().parent.parent
# A few-second run: tiny OPT, 32-token blocks, 2 micro batches per step (exercises accumulation).
FAST = {"preset": "tiny-opt", "context_length": 32, "batch_size": 8, "micro_batch_size": 4, "lr": 3e-3,
        "min_lr": 3e-4, "warmup_steps": 2, "max_steps": 8, "eval_interval": 4, "checkpoint_interval": 3,
        "log_interval": 1, "valid_fraction": 0.1, "model": {"dropout": 0.1}}


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    return write_markov_units(tmp_path_factory.mktemp("units") / "train.parquet", num_utterances=60,
                              vocab_size=16, min_len=10, max_len=60, successors=2, seed=0)


def cfg(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**FAST, **changes})


def run_cli(argv: list[str]) -> None:
    """`python -m lm.train ARGV`, in process: errors become `error:` lines and exit codes as on the command line."""
    run_main(lambda: lm.train.main(argv))


def latest(workdir: Path) -> Path:
    """The newest resumable checkpoint of a work directory."""
    return checkpoint_paths(workdir)[-1]


def workdir_record(workdir: Path) -> dict:
    return json.loads((workdir / "config.json").read_text())


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_unknown_and_bad_keys_are_named():
    with pytest.raises(ValueError, match="'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="'micro_batch_size'"):
        TrainConfig.from_dict({"batch_size": 10, "micro_batch_size": 4})
    with pytest.raises(ValueError, match="'max_steps'"):
        TrainConfig.from_dict({"max_tokens": 1000})
    with pytest.raises(ValueError, match="'max_epochs'"):
        TrainConfig.from_dict({"max_epochs": 2})
    with pytest.raises(ValueError, match="'max_steps', 'max_tokens' or 'max_epochs'"):
        TrainConfig.from_dict({"max_steps": None})
    with pytest.raises(ValueError, match="'preset'"):
        TrainConfig.from_dict({"preset": "gpt5"})


def test_token_budget_sets_the_step_count():
    c = TrainConfig.from_dict({"max_steps": None, "max_tokens": 10_000, "batch_size": 4, "micro_batch_size": 4,
                               "context_length": 100})
    assert c.total_steps() == 25
    assert TrainConfig.from_dict({"max_steps": 7, "max_tokens": 10**9}).total_steps() == 7


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    c = TrainConfig.from_dict({"lr": 1.0, "min_lr": 0.1, "warmup_steps": 10, "max_steps": 110})
    lrs = [lr_at(s, c, 110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)
    assert lr_at(500, c, 110) == pytest.approx(0.1)


def test_loss_decreases_and_model_dir_round_trips(units, tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    summary = train(units, work, out, cfg(max_steps=30, eval_interval=10, checkpoint_interval=100))
    rows = metrics(work)
    assert [r["step"] for r in rows] == list(range(1, 31))
    valid = [r["valid_loss"] for r in rows if "valid_loss" in r]
    assert len(valid) == 3
    assert valid[0] > valid[-1] + 0.5  # a 2-successor chain: far below log(19) ~ 2.94 is learnable
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert summary["steps"] == 30 and summary["valid_loss"] == pytest.approx(valid[-1])
    assert all(k in rows[-1] for k in ("tokens", "lr", "tokens_per_s", "grad_norm"))

    # The directory loads with plain transformers; last/ holds the weights of the last checkpoint.
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "last",
                                                     "model.safetensors", "provenance.json", "unit_vocab.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    model = AutoModelForCausalLM.from_pretrained(out / "last")
    state = torch.load(latest(work), weights_only=True)["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert UnitVocab.load(out) == UnitVocab(16) == UnitVocab.load(out / "last")
    info = json.loads((out / "provenance.json").read_text())
    assert info["config"]["preset"] == "tiny-opt" and info["code_version"] and info["training"]["steps"] == 30
    assert info["units_meta"]["vocab_size"] == 16


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


def test_resume_after_interruption_is_bit_identical(units, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    train(units, reference / "work", reference / "model", cfg())

    # Kill the second run in step 5 (checkpoints at 3 and 6), after it logged steps 4 and 5's metrics.
    real = lm.train.micro_batches

    def dying(blocks, config, step, dist):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(blocks, config, step, dist)

    monkeypatch.setattr(lm.train, "micro_batches", dying)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(units, resumed / "work", resumed / "model", cfg())
    assert not (resumed / "model").exists()
    assert torch.load(latest(resumed / "work"), weights_only=True)["step"] == 3
    monkeypatch.setattr(lm.train, "micro_batches", real)
    train(units, resumed / "work", resumed / "model", cfg())

    ref_w, res_w = _weights(reference / "model"), _weights(resumed / "model")
    assert ref_w.keys() == res_w.keys()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)
    assert _without_timing(metrics(resumed / "work")) == _without_timing(metrics(reference / "work"))


def test_rerun_after_completion_rewrites_the_same_model(units, tmp_path):
    train(units, tmp_path / "work", tmp_path / "model", cfg(max_steps=3))
    first = _weights(tmp_path / "model")
    summary = train(units, tmp_path / "work", tmp_path / "model", cfg(max_steps=3))
    assert summary["steps"] == 3
    assert all(torch.equal(first[k], v) for k, v in _weights(tmp_path / "model").items())


def test_changed_hyperparameters_start_afresh(units, tmp_path):
    train(units, tmp_path / "work", tmp_path / "model", cfg(max_steps=3))
    summary = train(units, tmp_path / "work", tmp_path / "model2", cfg(max_steps=3, lr=1e-2))
    assert summary["steps"] == 3
    assert [r["step"] for r in metrics(tmp_path / "work")] == [1, 2, 3]
    assert not torch.equal(_weights(tmp_path / "model")["model.decoder.embed_tokens.weight"],
                           _weights(tmp_path / "model2")["model.decoder.embed_tokens.weight"])


def test_packed_data_from_lm_pack_trains_the_same_model(units, tmp_path):
    """The workflow's path (lm.pack, then lm.train --data) equals packing inside the training job."""
    lm.pack.main(["--units", str(units), "--out", str(tmp_path / "data"), "--config", json.dumps(FAST)])
    run_cli(["--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "w1"), "--out", str(tmp_path / "m1"),
                   "--config", json.dumps({**FAST, "max_steps": 3})])
    train(units, tmp_path / "w2", tmp_path / "m2", cfg(max_steps=3))
    assert not (tmp_path / "w1" / "data").exists()  # nothing packed again in the training job
    first, second = _weights(tmp_path / "m1"), _weights(tmp_path / "m2")
    assert all(torch.equal(first[k], second[k]) for k in first)
    provenance = json.loads((tmp_path / "m1" / "provenance.json").read_text())
    assert provenance["units_meta"]["vocab_size"] == 16


def test_packed_data_with_another_split_or_none_is_refused(units, tmp_path):
    lm.pack.main(["--units", str(units), "--out", str(tmp_path / "data"), "--config", json.dumps(FAST)])
    with pytest.raises(ValueError, match="packed with seed=0, but the config says 1"):
        train(tmp_path / "data", tmp_path / "w", tmp_path / "m", cfg(seed=1))
    with pytest.raises(FileNotFoundError, match=r"meta.json is missing.*python -m lm.pack"):
        train(tmp_path, tmp_path / "w", tmp_path / "m", cfg())


def test_wall_clock_budget_stops_training(units, tmp_path):
    summary = train(units, tmp_path / "work", tmp_path / "model", cfg(max_steps=10_000, max_time_s=1e-9))
    assert summary["stopped_by"] == "time" and summary["steps"] == 1
    assert math.isfinite(summary["valid_loss"])
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model") is not None


def test_cli_rejects_unknown_key(units, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["--units", str(units), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "m"),
                 "--config", json.dumps({"bogus": 1})])
    assert "'bogus'" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_workers_match_one_process(units, tmp_path):
    """torchrun + gloo, 2 workers x 1 micro batch of 4 == 1 process x 2 micro batches of 4 (same global batch).
    The workers validate and checkpoint by the minute, after every step here: every rank must follow rank 0's clock
    (a rank deciding alone would hang in the checkpoint's collectives), and the weights do not change."""
    config = {**FAST, "max_steps": 4, "model": {"dropout": 0.0}}
    train(units, tmp_path / "one" / "work", tmp_path / "one" / "model", TrainConfig.from_dict(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    timed = {**config, "eval_interval": None, "eval_minutes": 1e-9, "checkpoint_interval": None,
             "checkpoint_minutes": 1e-9}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "lm.train", "--units", str(units), "--workdir", str(tmp_path / "two" / "work"),
                    "--out", str(tmp_path / "two" / "model"), "--config", json.dumps(timed)],
                   check=True, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert [r["step"] for r in metrics(tmp_path / "two" / "work") if "valid_loss" in r] == [1, 2, 3, 4]
    one, two = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)
    info = json.loads((tmp_path / "two" / "model" / "provenance.json").read_text())
    assert info["training"]["world_size"] == 2 and info["training"]["gradient_accumulation"] == 1


@pytest.mark.slow
def test_signal_to_one_of_two_workers_stops_both_and_the_retry_matches(units, tmp_path):
    """SIGUSR1 to rank 1 only: both ranks agree to stop at the same step boundary, checkpoint (every rank's RNG) and
    exit; rerunning resumes to exactly the weights of an uninterrupted 2-worker run."""
    config = {**FAST, "max_steps": 40, "log_interval": 1, "checkpoint_interval": 100, "eval_interval": 100}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "lm.train", "--units", str(units), "--workdir", str(tmp_path / name / "work"),
                                 "--out", str(tmp_path / name / "model"), "--config", json.dumps(config)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    reference = launch("ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    run = launch("run")
    log = tmp_path / "run" / "work" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:]
        time.sleep(0.05)
    rank1 = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_worker(p, "run", "1")]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGUSR1)
    assert run.wait(timeout=120) != 0
    err = run.stderr.read()
    assert "(SIGUSR1); resumable checkpoint" in err and "a stop requested on another rank" in err, err[-3000:]
    stopped = torch.load(latest(tmp_path / "run" / "work"), weights_only=True)
    assert 3 <= stopped["step"] < 40 and len(stopped["rng"]) == 2 and not (tmp_path / "run" / "model").exists()
    retry = launch("run")
    assert retry.wait(timeout=300) == 0, retry.stderr.read()[-3000:]
    ref_w, run_w = _weights(tmp_path / "ref" / "model"), _weights(tmp_path / "run" / "model")
    assert all(torch.equal(ref_w[k], run_w[k]) for k in ref_w)


def _is_worker(proc: Path, name: str, rank: str) -> bool:
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"lm.train" in cmdline and any(name.encode() + b"/work" in a for a in cmdline) and (
        f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b" ".join(environ))


def _cli(units: Path, work: Path, out: Path, config: dict, *extra: str) -> list[str]:
    return ["--units", str(units), "--workdir", str(work), "--out", str(out), "--config", json.dumps(config), *extra]


def test_nan_loss_exits_3_without_checkpoint_or_model(units, tmp_path, capsys):
    """The issue probe: lr 1e30 used to train every step at NaN and write a non-finite model with exit 0."""
    with pytest.raises(SystemExit) as stop:
        run_cli(_cli(units, tmp_path / "w", tmp_path / "m", {**FAST, "lr": 1e30}))
    assert stop.value.code == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "NaN/Inf between step 1 and step 2" in err and "Last good checkpoint: none" in err
    assert not checkpoint_paths(tmp_path / "w") and not (tmp_path / "m").exists()
    assert [r["step"] for r in metrics(tmp_path / "w")] == [1]  # the NaN step is not logged either


def test_nan_message_command_continues_from_the_last_good_checkpoint(units, tmp_path, monkeypatch, capsys):
    real_batches, real_loss, current = lm.train.micro_batches, lm.train.forward_loss, {}

    def batches(blocks, config, step, dist):
        current["step"] = step
        return real_batches(blocks, config, step, dist)

    def poisoned(model, batch, config):  # NaN from step 5 on (checkpoints at 3 and 6)
        loss = real_loss(model, batch, config)
        return loss * float("nan") if current["step"] >= 4 else loss

    monkeypatch.setattr(lm.train, "micro_batches", batches)
    monkeypatch.setattr(lm.train, "forward_loss", poisoned)
    with pytest.raises(SystemExit) as stop:
        run_cli(_cli(units, tmp_path / "w", tmp_path / "m", FAST))
    assert stop.value.code == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "between step 4 and step 5" in err and f"Last good checkpoint: {latest(tmp_path / 'w')}" in err
    assert torch.load(latest(tmp_path / "w"), weights_only=True)["step"] == 3
    assert not (tmp_path / "m").exists()

    # The printed command, as is (minus `python -m lm.train`), once the cause is gone.
    words = shlex.split(err.strip().splitlines()[-1])
    assert words[:3] == ["python", "-m", "lm.train"] and "--init-from" in words
    monkeypatch.setattr(lm.train, "forward_loss", real_loss)
    run_cli(words[3:])
    new = tmp_path / "w-lr0.0015"
    state = torch.load(latest(new), weights_only=True)
    origin = {"checkpoint": str(latest(tmp_path / "w").resolve()), "step": 3,
              "changed": {"lr": [3e-3, 1.5e-3], "min_lr": [3e-4, 1.5e-4]}}
    assert state["step"] == 8 and workdir_record(new)["init_from"] == origin
    rows = metrics(new)
    assert rows[0] == {"step": 3, "event": "init_from", **origin}
    assert [r["step"] for r in rows[1:]] == [4, 5, 6, 7, 8] and all(math.isfinite(r["train_loss"]) for r in rows[1:])
    assert json.loads((tmp_path / "m" / "provenance.json").read_text())["init_from"] == origin


def test_stop_signal_checkpoints_exits_75_and_resumes_bit_identically(units, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    train(units, reference / "work", reference / "model", cfg())

    real = lm.train.micro_batches

    def signalled(blocks, config, step, dist):
        if step == 4:  # SIGUSR1 arrives during step 5: it completes, then the run stops at the boundary
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(blocks, config, step, dist)

    monkeypatch.setattr(lm.train, "micro_batches", signalled)
    work, out = tmp_path / "run" / "work", tmp_path / "run" / "model"
    with pytest.raises(SystemExit) as stop:
        run_cli(_cli(units, work, out, FAST))
    assert stop.value.code == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the trainer's handler is gone
    assert torch.load(latest(work), weights_only=True)["step"] == 5 and not out.exists()
    monkeypatch.setattr(lm.train, "micro_batches", real)

    # --init-from the interrupted run with an unchanged config continues it exactly, in a new work directory ...
    train(units, tmp_path / "copy" / "work", tmp_path / "copy" / "model", cfg(), init_from=work)
    # ... and so does the retry in the same work directory.
    train(units, work, out, cfg())
    ref_w = _weights(reference / "model")
    for other in (out, tmp_path / "copy" / "model"):
        w = _weights(other)
        assert w.keys() == ref_w.keys() and all(torch.equal(ref_w[k], w[k]) for k in ref_w)
    assert _without_timing(metrics(work)) == _without_timing(metrics(reference / "work"))
    init = workdir_record(tmp_path / "copy" / "work")["init_from"]
    assert init["step"] == 5 and init["changed"] == {}


def test_signal_during_the_last_step_never_writes_the_model(units, tmp_path, monkeypatch):
    real = lm.train.micro_batches

    def signalled(blocks, config, step, dist):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(blocks, config, step, dist)

    monkeypatch.setattr(lm.train, "micro_batches", signalled)
    with pytest.raises(TrainingInterrupted, match=r"step 8 \(SIGTERM\)"):
        train(units, tmp_path / "w", tmp_path / "m", cfg())
    assert not (tmp_path / "m").exists()
    assert torch.load(latest(tmp_path / "w"), weights_only=True)["step"] == 8


def test_init_from_refuses_a_model_of_another_shape(units, tmp_path):
    train(units, tmp_path / "a", tmp_path / "ma", cfg(max_steps=3))
    with pytest.raises(ValueError, match=r"--init-from .*step_\d+\.pt: its model does not fit"):
        train(units, tmp_path / "b", tmp_path / "mb", cfg(max_steps=3, model={"dropout": 0.1, "num_hidden_layers": 1}),
              init_from=tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=r"no such work directory or checkpoint"):
        train(units, tmp_path / "c", tmp_path / "mc", cfg(), init_from=tmp_path / "nowhere")


# --- intervals in steps or minutes, best and last, epoch budgets ------------------------------------------------


class _Rank:
    """A stand-in for one rank of a two-process job whose collectives return rank 0's flags."""

    def __init__(self, rank: int, rank0_flags: list[bool]) -> None:
        self.rank, self.is_main, self.rank0_flags = rank, rank == 0, rank0_flags

    def any(self, *flags: bool) -> list[bool]:
        return [a or b for a, b in zip(flags, self.rank0_flags, strict=True)]


def test_interval_fires_by_steps_or_by_rank0_clock():
    now = [0.0]
    every = lm.train.Interval(steps=4, minutes=None, clock=lambda: now[0])
    assert [s for s in range(1, 13) if every.by_steps(s)] == [4, 8, 12]
    now[0] = 1e9
    assert not every.by_clock(_Rank(0, [False]))  # no minutes: never by the clock
    timed = lm.train.Interval(steps=None, minutes=2.0, clock=lambda: now[0])
    assert not timed.by_steps(4)
    now[0] += 119.0
    assert not timed.by_clock(_Rank(0, [False]))
    now[0] += 1.0
    assert timed.by_clock(_Rank(0, [False]))
    timed.done()
    assert not timed.by_clock(_Rank(0, [False]))
    # Another rank never reads its own clock (it may run ahead or behind): it follows rank 0 both ways.
    late = lm.train.Interval(steps=None, minutes=1.0, clock=lambda: 1e12)
    assert not late.by_clock(_Rank(1, [False])) and late.by_clock(_Rank(1, [True]))


class _StepClock:
    """Patches lm.train so that the intervals' clock reads one minute per completed optimizer step."""

    def __init__(self, monkeypatch) -> None:
        self.done = 0
        real_batches, real_interval = lm.train.micro_batches, lm.train.Interval

        def batches(blocks, config, step, dist):
            self.done = step + 1  # read after this step, when the intervals are asked
            return real_batches(blocks, config, step, dist)

        def interval(steps, minutes):
            return real_interval(steps, minutes, clock=lambda: 60.0 * self.done)

        monkeypatch.setattr(lm.train, "micro_batches", batches)
        monkeypatch.setattr(lm.train, "Interval", interval)


def test_minutes_intervals_checkpoint_and_validate_without_changing_the_weights(units, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    train(units, reference / "work", reference / "model", cfg())  # by steps: valid 4, 8; checkpoints 3, 6, 8

    clock = _StepClock(monkeypatch)
    saved = []
    real_save = lm.train.Workdir.save
    monkeypatch.setattr(lm.train.Workdir, "save",
                        lambda self, state, step: (saved.append(step), real_save(self, state, step))[1])
    timed = cfg(eval_interval=None, eval_minutes=2.5, checkpoint_interval=None, checkpoint_minutes=2.5)
    train(units, tmp_path / "work", tmp_path / "model", timed)
    assert saved == [3, 6, 8]  # every 2.5 "minutes", and at the end
    assert [r["step"] for r in metrics(tmp_path / "work") if "valid_loss" in r] == [3, 6, 8]
    ref_w, w = _weights(reference / "model" / "last"), _weights(tmp_path / "model" / "last")
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w)
    assert clock.done == 8


def test_default_intervals_suit_paper_scale():
    c = TrainConfig()
    assert (c.eval_interval, c.eval_minutes, c.checkpoint_interval, c.checkpoint_minutes) == (1000, None, None, 30.0)
    with pytest.raises(ValueError, match="'checkpoint_minutes'"):
        TrainConfig.from_dict({"checkpoint_minutes": 0})


def test_best_and_last_survive_a_crash_between_checkpoints(units, tmp_path, monkeypatch):
    """Validation scripted by step (best at 4, worse later); the run dies in step 5, after writing best-step 4 but
    with a checkpoint (step 3) that still names best-step 2: the resumed run keeps the right best and last."""
    clock = _StepClock(monkeypatch)
    script = {2: 3.0, 4: 1.0, 6: 2.0, 8: 1.5}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(model, blocks, config, dist, precision):
        snapshots[clock.done] = {k: v.clone() for k, v in model.state_dict().items()}
        return script[clock.done]

    monkeypatch.setattr(lm.train, "evaluate", scripted)
    c = cfg(eval_interval=2, checkpoint_interval=3)
    work, out = tmp_path / "work", tmp_path / "model"
    real_batches = lm.train.micro_batches

    def dying(blocks, config, step, dist):
        if step == 4:
            raise KeyboardInterrupt("simulated kill in step 5")
        return real_batches(blocks, config, step, dist)

    monkeypatch.setattr(lm.train, "micro_batches", dying)
    with pytest.raises(KeyboardInterrupt):
        train(units, work, out, c)
    assert sorted(p.name for p in work.glob("best-step*")) == ["best-step00000002", "best-step00000004"]
    monkeypatch.setattr(lm.train, "micro_batches", real_batches)
    summary = train(units, work, out, c)

    assert summary["best_step"] == 4 and summary["best_valid_loss"] == 1.0 and summary["valid_loss"] == 1.5
    assert [p.name for p in work.glob("best-step*")] == ["best-step00000004"]
    best, last = _weights(out), _weights(out / "last")
    model = AutoModelForCausalLM.from_pretrained(out)  # the top level is a plain HF directory: the best model
    assert all(torch.equal(model.state_dict()[k], snapshots[4][k]) for k in snapshots[4])
    assert all(torch.equal(v, snapshots[8][k]) for k, v in AutoModelForCausalLM.from_pretrained(
        out / "last").state_dict().items())
    assert not all(torch.equal(best[k], last[k]) for k in best)
    info = json.loads((out / "provenance.json").read_text())
    assert "best model (lowest validation loss, step 4)" in info["conventions"]["model"]
    assert [r.get("best", False) for r in metrics(work) if "valid_loss" in r] == [True, True, False, False]

    # Scoring reads the best model unless told otherwise, and says which it read.
    from lm.score import score_units_file

    score_units_file(out, units, tmp_path / "best.tsv", device="cpu")
    score_units_file(out, units, tmp_path / "last.tsv", device="cpu", which="last")
    assert (tmp_path / "best.tsv").read_text() != (tmp_path / "last.tsv").read_text()
    conventions = json.loads((tmp_path / "best.tsv.json").read_text())["conventions"]["model"]
    assert conventions.startswith("best: lowest validation loss 1.0 at step 4 of 8")
    assert json.loads((tmp_path / "last.tsv.json").read_text())["conventions"]["model"].startswith("last: ")


def test_without_validation_data_the_model_is_the_last(units, tmp_path):
    summary = train(units, tmp_path / "work", tmp_path / "model", cfg(valid_fraction=0.0, max_steps=3))
    assert summary["best_step"] is None and summary["valid_loss"] is None
    best, last = _weights(tmp_path / "model"), _weights(tmp_path / "model" / "last")
    assert all(torch.equal(best[k], last[k]) for k in best)
    assert "no best model: no validation data" in json.loads((tmp_path / "model" / "provenance.json").read_text())[
        "conventions"]["model"]


def test_epoch_budget_resolves_against_the_packed_corpus(units, tmp_path):
    c = TrainConfig.from_dict({"max_steps": 100, "max_epochs": 2, "batch_size": 4, "micro_batch_size": 4})
    assert c.budgets(10) == {"max_steps": 100, "max_epochs": 5} and c.total_steps(10) == 5
    assert TrainConfig.from_dict({"max_steps": None, "max_epochs": 0.01}).total_steps(10) == 1  # at least one step
    with pytest.raises(ValueError, match="number of blocks"):
        c.total_steps()

    summary = train(units, tmp_path / "work", tmp_path / "model", cfg(max_steps=None, max_epochs=0.5))
    blocks = summary["train_blocks"]
    assert summary["budgets"] == {"max_epochs": math.ceil(0.5 * blocks / 8)} == {"max_epochs": summary["steps"]}
    assert summary["epochs"] == pytest.approx(summary["steps"] * 8 / blocks)
    assert 0.5 <= summary["epochs"] < 0.5 + 8 / blocks
    info = json.loads((tmp_path / "model" / "provenance.json").read_text())
    assert info["config"]["max_epochs"] == 0.5 and info["training"]["budgets"] == summary["budgets"]


def test_a_deleted_best_model_is_chosen_afresh_on_resume(units, tmp_path, monkeypatch, capsys):
    real = lm.train.micro_batches

    def dying(blocks, config, step, dist):
        if step == 6:
            raise KeyboardInterrupt("simulated kill in step 7")
        return real(blocks, config, step, dist)

    monkeypatch.setattr(lm.train, "micro_batches", dying)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        train(units, work, tmp_path / "model", cfg())  # valid 4; checkpoints 3, 6 (naming best-step 4)
    assert torch.load(latest(work), weights_only=True)["best_step"] == 4
    lm.train.shutil.rmtree(work / "best-step00000004")
    monkeypatch.setattr(lm.train, "micro_batches", real)
    summary = train(units, work, tmp_path / "model", cfg())
    assert "best-step00000004 is missing: the best model is chosen afresh" in capsys.readouterr().err
    assert summary["best_step"] == 8 and [p.name for p in work.glob("best-step*")] == ["best-step00000008"]
