"""SpidR pretraining: batches, bit-identical resume across the CNN freeze, divergence stop, CLI, DDP, learning."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.cli import run_main
from common.runtime import EXIT_DIVERGED, EXIT_INTERRUPTED
from data.audio import write_wav
from data.manifest import build_manifest
from spidr.checkpoint import load_encoder, read_checkpoint
from spidr.config import DataConfig, MaskConfig, TrainConfig
from spidr.dataset import PretrainBatches, plan_batches
from spidr.model import DinoSR
from spidr.schedules import ema_decay_at
from spidr.train import TrainingDiverged, main, train

REPO = Path(__file__).resolve().parent.parent
TINY = {"preset": "tiny", "max_steps": 6, "freeze_step": 3, "checkpoint_interval": 2,
        "data": {"global_batch_samples": 40_000, "batch_samples": 40_000}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """12 short synthetic utterances (tones in noise, 0.4-2.5 s) from 3 'speakers', with a manifest."""
    root = tmp_path_factory.mktemp("spidr_corpus")
    rng = np.random.default_rng(0)
    for i in range(12):
        n = int(rng.integers(6_400, 40_000))
        t = np.arange(n) / 16_000
        f0 = rng.uniform(100, 300)
        wav = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))) + 0.05 * rng.standard_normal(n)
        write_wav(root / "wav" / f"s{i % 3}-utt{i:02d}.wav", wav.astype(np.float32))
    with open(os.devnull, "w") as quiet:
        build_manifest(root / "wav", root / "manifest.tsv", speaker="prefix", log=quiet)
    return root / "manifest.tsv"


def run_cli(argv: list[str]) -> None:
    """`python -m spidr.train ARGV`, in process: errors become `error:` lines and exit codes as on the command line."""
    run_main(lambda: main(argv))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def test_batches_are_bucketed_cropped_and_masked(corpus):
    lengths = [3000, 1000, 320_500, 5000, 5100, 40_000, 39_000, 2500]
    batches = plan_batches(lengths, batch_samples=50_000, min_samples=2000, max_samples=320_000, num_buckets=1000,
                           seed=0, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == [0, 2, 3, 4, 5, 6, 7]  # index 1 is shorter than min_samples
    for b in batches:  # adjacent lengths share a batch; the budget holds unless one item alone exceeds it
        assert len(b) == 1 or sum(min(lengths[i], 320_000) for i in b) <= 50_000
    assert batches == plan_batches(lengths, batch_samples=50_000, min_samples=2000, max_samples=320_000,
                                   num_buckets=1000, seed=0, epoch=0)
    data = DataConfig(batch_samples=40_000, num_workers=0)
    conv = TrainConfig.from_dict({"preset": "tiny"}).model.conv_layers
    ds = PretrainBatches(corpus, data, MaskConfig(), conv, seed=0)
    seen = []
    for j in range(len(ds)):
        item = ds[j]
        wavs, mask = item["wavs"], item["mask"]
        members = ds.batches[j]
        assert wavs.shape[0] == len(members) == mask.shape[0]
        assert wavs.shape[1] == min(ds.lengths[i] for i in members)  # cropped to the shortest, no padding
        assert mask.shape[1] > 0 and int(mask.max()) < (wavs.shape[1] - 400) // 320 + 1
        seen += members
        assert torch.equal(ds[j]["wavs"], wavs) and torch.equal(ds[j]["mask"], mask)  # deterministic
    full = [ds[j]["wavs"] for j in range(len(ds)) if len(ds.batches[j]) == 1]
    for w in full:  # uncropped single items are standardised utterances
        assert abs(float(w.mean())) < 1e-4 and abs(float(w.std(unbiased=False)) - 1) < 1e-3
    assert sorted(seen) == list(range(12))


def test_data_order_is_global(corpus):
    """Step g trains on the same micro-batches (same items, crops, masks) however they are spread over ranks."""
    data = DataConfig(global_batch_samples=80_000, batch_samples=40_000, num_workers=0)
    conv = TrainConfig.from_dict({"preset": "tiny"}).model.conv_layers

    def steps(world: int, accumulation: int) -> dict[int, dict[int, dict]]:
        out: dict[int, dict[int, dict]] = {}
        for rank in range(world):
            ds = PretrainBatches(corpus, data, MaskConfig(), conv, seed=0, rank=rank, world=world,
                                 accumulation=accumulation)
            assert ds.steps_per_epoch == len(ds.batches) // 2
            for j in range(len(ds)):
                out.setdefault(j // accumulation, {})[ds.indices[j]] = ds[j]
        return out

    one, two = steps(1, 2), steps(2, 1)
    assert len(one) >= 2 and one.keys() == two.keys()
    for g in one:
        assert set(one[g]) == set(two[g]) == {2 * g, 2 * g + 1}
        for i, item in one[g].items():
            assert torch.equal(item["wavs"], two[g][i]["wavs"]) and torch.equal(item["mask"], two[g][i]["mask"])
    # 4 processes cannot fill a step of 2 micro-batches: the message names what to change
    with pytest.raises(ValueError, match=r"global batch of 4 \(4 process\(es\) x 1 accumulation\)"):
        PretrainBatches(corpus, DataConfig(global_batch_samples=10**6, batch_samples=250_000), MaskConfig(), conv,
                        seed=0, world=4)


@pytest.mark.parametrize("codebook_interval", [1, 4])
def test_resume_is_bit_identical_across_the_freeze(corpus, tmp_path, codebook_interval):
    torch.set_num_threads(1)
    cfg = {**TINY, "model": {"codebook_update_interval": codebook_interval}}
    train(cfg, str(corpus), str(tmp_path / "a"), str(tmp_path / "a.pt"))
    # interrupted twice: before the freeze (step 2 of 6, freeze after 3) and after it (step 5); with an update
    # interval of 4, both stops fall between codebook updates, so pending statistics must survive the resume
    train(cfg, str(corpus), str(tmp_path / "b"), str(tmp_path / "b.pt"), stop_after=2)
    assert not (tmp_path / "b.pt").exists()
    mid = read_checkpoint(sorted((tmp_path / "b" / "checkpoints").glob("*.pt"))[-1])
    assert mid["step"] == 2 and not mid["frozen"] and len(mid["optimizer"]["param_groups"]) == 2
    if codebook_interval == 4:
        assert int(mid["codebook_pending"]["steps"]) == 2
    else:
        assert mid["codebook_pending"] is None
    train(cfg, str(corpus), str(tmp_path / "b"), str(tmp_path / "b.pt"), stop_after=5)
    late = read_checkpoint(sorted((tmp_path / "b" / "checkpoints").glob("*.pt"))[-1])
    assert late["step"] == 5 and late["frozen"] and len(late["optimizer"]["param_groups"]) == 1
    train(cfg, str(corpus), str(tmp_path / "b"), str(tmp_path / "b.pt"))
    a, b = weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the CNN stopped changing at the freeze; the transformer did not
    assert torch.equal(late["model"]["feature_extractor.conv_layers.1.conv.weight"],
                       a["feature_extractor.conv_layers.1.conv.weight"])
    qkv = "student.layers.0.attention.qkv.weight"
    assert not torch.equal(late["model"][qkv], a[qkv])
    final = read_checkpoint(tmp_path / "a.pt")
    assert final["step"] == 6 and "optimizer" not in final
    assert final["provenance"]["training"]["steps"] == 6 and final["train_config"]["max_steps"] == 6
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # one line per step, none duplicated by the resumes
    model = load_encoder(tmp_path / "a.pt")
    assert model.kind == "spidr" and model.layer_outputs(torch.randn(1, 8000), [1])[1].shape == (1, 24, 32)


def test_metrics_log(corpus, tmp_path):
    train({**TINY, "max_steps": 2}, str(corpus), str(tmp_path / "w"), str(tmp_path / "w.pt"),
          valid_manifest=str(corpus))
    records = [json.loads(ln) for ln in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if r["split"] == "train"]
    valid_rec = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in train_rec] == [1, 2] and valid_rec and valid_rec[-1]["step"] == 2
    r = train_rec[-1]
    for key in ("loss", "lr", "ema_decay", "grad_norm", "audio_seconds_per_second", "target_ppl", "pred_ppl",
                "active_codewords"):
        assert key in r
    assert len(r["target_ppl"]) == len(r["active_codewords"]) == 3 and 1 <= r["target_ppl"][0] <= 16
    assert np.isfinite(r["loss"]) and np.isfinite(valid_rec[-1]["loss"])


def poison_loss_from_step(monkeypatch, first: int) -> None:
    """Make the model's loss NaN from training step `first` on (a divergence the trainer must catch)."""
    forward = DinoSR.forward

    def poisoned(self, wavs, mask_index, frames=None):
        loss, stats = forward(self, wavs, mask_index, frames)
        if int(self.current_step) >= first:
            loss, stats = loss * float("nan"), {**stats, "loss_sum": stats["loss_sum"] * float("nan")}
        return loss, stats

    monkeypatch.setattr(DinoSR, "forward", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    poison_loss_from_step(monkeypatch, 3)
    cfg = {**TINY, "log_interval": 2}
    with pytest.raises(TrainingDiverged, match=r"NaN/Inf.*step 2 and step 4.*step_00000002\.pt"):
        train(cfg, str(corpus), str(tmp_path / "w"), str(tmp_path / "w.pt"))
    assert [p.name for p in (tmp_path / "w" / "checkpoints").glob("*.pt")] == ["step_00000002.pt"]
    assert not (tmp_path / "w.pt").exists()
    good = weights(tmp_path / "w" / "checkpoints" / "step_00000002.pt")
    assert all(torch.isfinite(v.float()).all() for v in good.values())


def _args(corpus: Path, work: Path, out: Path, config: dict) -> list[str]:
    return ["--manifest", str(corpus), "--workdir", str(work), "--out", str(out), "--config", json.dumps(config)]


def test_nan_message_command_continues_from_the_last_good_checkpoint(corpus, tmp_path, monkeypatch, capsys):
    poison_loss_from_step(monkeypatch, 3)
    cfg = {**TINY, "log_interval": 2}
    with pytest.raises(SystemExit) as stop:
        run_cli(_args(corpus, tmp_path / "w", tmp_path / "w.pt", cfg))
    assert stop.value.code == EXIT_DIVERGED
    err = capsys.readouterr().err
    good = tmp_path / "w" / "checkpoints" / "step_00000002.pt"
    assert f"Last good checkpoint: {good}" in err and "half the learning rate" in err

    # The printed command, as is (minus `python -m spidr.train`), once the cause is gone.
    words = shlex.split(err.strip().splitlines()[-1])
    assert words[:3] == ["python", "-m", "spidr.train"] and words[words.index("--init-from") + 1] == str(good)
    monkeypatch.undo()  # the cause is gone: the real loss again
    run_cli(words[3:])
    lr = TrainConfig.from_dict(cfg).optim.lr
    new = tmp_path / f"w-lr{lr / 2:g}"
    origin = {"checkpoint": str(good.resolve()), "step": 2, "changed": {"optim.lr": [lr, lr / 2]}}
    final = read_checkpoint(tmp_path / "w.pt")
    assert final["step"] == 6 and final["train_config"]["optim"]["lr"] == lr / 2
    assert final["provenance"]["training"]["init_from"] == origin
    assert json.loads((new / "config.json").read_text())["init_from"] == origin
    records = [json.loads(ln) for ln in (new / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 2, "event": "init_from", **origin}
    assert [r["step"] for r in records[1:]] == [4, 6] and all(np.isfinite(r["loss"]) for r in records[1:])


def test_stop_signal_checkpoints_exits_75_and_resumes_bit_identically(corpus, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    train(TINY, str(corpus), str(tmp_path / "a"), str(tmp_path / "a.pt"))
    forward = DinoSR.forward

    def signalled(self, wavs, mask_index, frames=None):
        if int(self.current_step) == 2:  # SIGUSR1 during step 3: it completes, then the run stops at the boundary
            os.kill(os.getpid(), signal.SIGUSR1)
        return forward(self, wavs, mask_index, frames)

    monkeypatch.setattr(DinoSR, "forward", signalled)
    with pytest.raises(SystemExit) as stop:
        run_cli(_args(corpus, tmp_path / "b", tmp_path / "b.pt", TINY))
    assert stop.value.code == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the trainer's handler is gone
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("*.pt")) == ["step_00000002.pt",
                                                                                      "step_00000003.pt"]
    assert not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(DinoSR, "forward", forward)

    # --init-from the interrupted run with an unchanged config continues it exactly (across the CNN freeze after
    # step 3), in a new work directory; so does the retry in the same work directory.
    train(TINY, str(corpus), str(tmp_path / "c"), str(tmp_path / "c.pt"), init_from=str(tmp_path / "b"))
    train(TINY, str(corpus), str(tmp_path / "b"), str(tmp_path / "b.pt"))
    a = weights(tmp_path / "a.pt")
    for other in ("b.pt", "c.pt"):
        w = weights(tmp_path / other)
        assert set(w) == set(a) and all(torch.equal(a[k], w[k]) for k in a), other
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert read_checkpoint(tmp_path / "c.pt")["provenance"]["training"]["init_from"]["changed"] == {}


def test_teacher_ema_uses_the_decay_of_the_step_just_taken(corpus, tmp_path, monkeypatch):
    """As the official code: the first update (after optimiser step 1) uses decay(1), not decay(0)."""
    base = TrainConfig.from_dict({})
    assert ema_decay_at(1, base) == pytest.approx(1 - 0.001 * math.exp(-1 / 20_000), rel=0, abs=1e-15)  # 0.99900005
    assert ema_decay_at(1, base) != ema_decay_at(0, base) == 0.999
    seen = []
    update = DinoSR.update_ema
    monkeypatch.setattr(DinoSR, "update_ema", lambda self, decay: (seen.append(decay), update(self, decay)))
    cfg = {**TINY, "max_steps": 3}
    train(cfg, str(corpus), str(tmp_path / "w"), None)
    assert seen == [ema_decay_at(step, TrainConfig.from_dict(cfg)) for step in (1, 2, 3)]
    logged = [json.loads(ln)["ema_decay"] for ln in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert logged == seen


def test_cli_rejects_unknown_keys(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["--manifest", str(corpus), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o.pt"),
                 "--config", '{"preset": "tiny", "model": {"num_layer": 2}}'])
    assert "model.num_layer" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_ddp_gloo(corpus, tmp_path):
    """Two CPU processes (gloo): codebook statistics are all-reduced, the run completes and resumes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "spidr.train",
           "--manifest", str(corpus), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o.pt"),
           "--config", json.dumps({**TINY, "max_steps": 3, "progress": False,
                                   "data": {"global_batch_samples": 40_000, "batch_samples": 20_000}})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, "--stop-after", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = read_checkpoint(tmp_path / "o.pt")
    assert final["step"] == 3 and final["provenance"]["training"]["world_size"] == 2
    records = [json.loads(ln) for ln in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one_accumulating(corpus, tmp_path):
    """Same global batch and data order: 2 gloo processes x 1 micro-batch == 1 process x 2 micro-batches, weights,
    teacher and codebooks included (across the CNN freeze at step 3, dropout on). Bit for bit (tolerance 0), as
    measured: with two terms every sum is order-free (a + b == b + a) and the per-rank loss scaling by the world size
    (a power of two) is exact; more processes or micro-batches may differ by float summation order only.
    A run stopped on 2 processes resumes on 1 as the same run. A world size that cannot reach the global batch is
    refused before training, naming the keys."""
    torch.set_num_threads(1)
    cfg = {**TINY, "max_steps": 4, "progress": False,
           "data": {"global_batch_samples": 40_000, "batch_samples": 20_000}}
    one = train(cfg, str(corpus), str(tmp_path / "one"), str(tmp_path / "one.pt"))
    assert (one.dist.world, one.accumulation) == (1, 2)

    def two_processes(name: str, config: dict, *extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "spidr.train", "--manifest", str(corpus), "--workdir", str(tmp_path / name), "--out",
               str(tmp_path / f"{name}.pt"), "--config", json.dumps(config), *extra]
        return subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=300)

    done = two_processes("two", cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) x 1 accumulation x 20000 samples = 40000 samples" in done.stderr
    a, b = read_checkpoint(tmp_path / "one.pt"), read_checkpoint(tmp_path / "two.pt")
    assert a["provenance"]["training"]["batch"] == {**b["provenance"]["training"]["batch"], "world_size": 1,
                                                    "accumulation": 2}
    assert set(a["model"]) == set(b["model"])
    for key in a["model"]:  # teacher.*, codebooks.* and current_step included
        assert torch.equal(a["model"][key], b["model"][key]), key
    logs = [[json.loads(ln) for ln in (tmp_path / w / "metrics.jsonl").read_text().splitlines()]
            for w in ("one", "two")]
    for ra, rb in zip(*logs, strict=True):
        assert ra["masked_frames_per_step"] == rb["masked_frames_per_step"]
        assert ra["target_ppl"] == rb["target_ppl"] and ra["loss"] == rb["loss"]
        assert (rb["world_size"], rb["accumulation"], rb["effective_batch_samples"]) == (2, 1, 40_000)

    # Stopped after step 2 on 2 processes, resumed on 1: the same run (the data order and the codebook statistics
    # are global, dropout is seeded per micro-batch).
    done = two_processes("three", cfg, "--stop-after", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    train(cfg, str(corpus), str(tmp_path / "three"), str(tmp_path / "three.pt"))
    c = read_checkpoint(tmp_path / "three.pt")
    assert all(torch.equal(a["model"][key], c["model"][key]) for key in a["model"])

    refused = {**cfg, "data": {"global_batch_samples": 40_000, "batch_samples": 40_000}}
    done = two_processes("refused", refused)
    assert done.returncode != 0 and not (tmp_path / "refused").exists()
    assert re.search(r"data\.global_batch_samples=40000 cannot be reached exactly on world size 2 with "
                     r"data\.batch_samples=40000", done.stderr), done.stderr[-3000:]


@pytest.mark.slow
def test_loss_decreases_on_the_demo_corpus(demo_corpus, tmp_path):
    torch.set_num_threads(2)
    cfg = {"preset": "tiny", "max_steps": 40, "log_interval": 5, "checkpoint_interval": 40,
           "optim": {"lr": 2e-3, "warmup_steps": 4},
           "data": {"global_batch_samples": 16_000 * 12, "batch_samples": 16_000 * 12},
           "model": {"dropout": 0.0, "attention_dropout": 0.0}}
    train(cfg, str(demo_corpus / "train" / "manifest.tsv"), str(tmp_path / "w"), str(tmp_path / "o.pt"))
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.1, losses
    shutil.rmtree(tmp_path / "w")


def test_diagnose_reports_teacher_and_head_labels(corpus, tmp_path):
    from eval.diagnose import label_stats
    from eval.diagnose import main as diagnose_main

    # by hand: labels 0 0 1 | 2 2 ; phones repeated x2 at 100 Hz and identical to the labels -> PNMI 1
    labs = [np.array([0, 0, 1]), np.array([2, 2])]
    phones = {"a": ["x", "x", "x", "x", "y", "y"], "b": ["z"] * 4}
    stats = label_stats(labs, 4, phones, ["a", "b"])
    assert stats["active"] == 3 and stats["same_as_previous"] == pytest.approx(2 / 3)
    p = np.array([2, 1, 2]) / 5
    assert stats["perplexity"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert stats["pnmi"] == pytest.approx(1.0)

    train({**TINY, "max_steps": 2}, str(corpus), str(tmp_path / "w"), str(tmp_path / "m.pt"))
    out = tmp_path / "d.json"
    diagnose_main(["--checkpoint", str(tmp_path / "m.pt"), "--manifest", str(corpus), "--out", str(out)])
    report = json.loads(out.read_text())
    model = load_encoder(tmp_path / "m.pt")
    assert sorted(map(int, report["layers"])) == model.codebook_layers
    for layer in report["layers"].values():
        for key in ("teacher_assignments", "head_argmax"):
            assert 1 <= layer[key]["active"] <= model.codebook_size and "pnmi" not in layer[key]
        assert 1.0 <= layer["target_effective_rank"] <= model.embed_dim
