"""configs/gpu_quick.yaml on CPU: the scaled recipe, the multi-reading corpus, pretraining with learning curves."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spidr.config import ConfigError, TrainConfig
from spidr.schedules import ema_decay_at, ema_movement, exponential_ema, scaled_ema, scaled_recipe

REPO = Path(__file__).resolve().parent.parent
GPU_QUICK = REPO / "configs/gpu_quick.yaml"


def gpu_quick() -> dict:
    return yaml.safe_load(GPU_QUICK.read_text())


# --- the recipe scaled to a step budget ---------------------------------------------------------------------------


def test_scaled_recipe_at_the_papers_step_count_is_the_papers_recipe() -> None:
    r = scaled_recipe(400_000)
    assert (r.warmup_steps, r.hold_steps, r.decay_steps, r.freeze_step) == (12_000, 188_000, 200_000, 200_000)
    assert (r.ema_start_decay, r.ema_timescale) == (0.999, 20_000.0)
    assert r.ema_movement == r.paper_ema_movement == pytest.approx(20.0, abs=0.01)
    # and so is the `movement` scaling of the base preset: exactly the proportional (paper) schedule
    paper = TrainConfig.from_dict({"preset": "base"}).schedule()
    scaled = TrainConfig.from_dict({"preset": "base", "ema": {"scaling": "movement"}}).schedule()
    assert {**scaled, "ema_scaling": "proportional"} == paper


@pytest.mark.parametrize("steps", [8_000, 10_000, 1_000])
def test_ema_movement_is_the_sum_over_the_run_the_trainer_applies(steps: int) -> None:
    cfg = TrainConfig.from_dict({"preset": "medium", "max_steps": steps})
    r = scaled_recipe(steps)
    assert cfg.schedule()["ema_movement"] == pytest.approx(r.ema_movement, rel=1e-12)
    assert (cfg.ema_start_decay, cfg.ema_timescale) == (r.ema_start_decay, r.ema_timescale)
    # The trainer applies decay(t) after its t-th update, t = 1..max_steps.
    brute = math.fsum(1.0 - ema_decay_at(t, cfg) for t in range(1, steps + 1))
    assert r.ema_movement == pytest.approx(brute, rel=1e-9)
    # (1 - start) x timescale stays the paper's 0.001 x 20k; the run covers 20 sqrt(N / 400k) timescales of it.
    assert (1 - r.ema_start_decay) * r.ema_timescale == pytest.approx(20.0, rel=1e-12)
    assert r.ema_movement == pytest.approx(
        20.0 * math.exp(-1 / r.ema_timescale) / (r.ema_timescale * -math.expm1(-1 / r.ema_timescale))
        * -math.expm1(-20 * math.sqrt(steps / 400_000)), rel=1e-9)


def test_scaled_ema_at_ten_thousand_steps_keeps_most_of_the_papers_movement() -> None:
    start, timescale = scaled_ema(10_000)
    assert start == pytest.approx(1 - 0.001 / math.sqrt(0.025)) and timescale == pytest.approx(20_000 * 0.158114, 1e-5)
    assert 0.95 < scaled_recipe(10_000).ema_movement / scaled_recipe(10_000).paper_ema_movement < 0.97


def test_ema_movement_stops_where_the_teacher_freezes() -> None:
    # 0.1 * exp(-t / 100) <= 1e-7 from t = 100 ln(1e6) = 1381.6: steps after that add nothing
    brute = math.fsum(1 - exponential_ema(t, start_decay=0.9, timescale=100) for t in range(1, 5001))
    assert ema_movement(5000, start_decay=0.9, timescale=100) == pytest.approx(brute, rel=1e-9)
    assert ema_movement(5000, start_decay=0.9, timescale=100) == ema_movement(1381, start_decay=0.9, timescale=100)
    assert ema_movement(1380, start_decay=0.9, timescale=100) < ema_movement(1381, start_decay=0.9, timescale=100)


def test_proportional_scaling_is_unchanged_and_explicit_values_win() -> None:
    small = TrainConfig.from_dict({"preset": "small"})
    assert (small.ema_start_decay, small.ema_timescale) == (0.999, 30.0)
    medium = TrainConfig.from_dict({"preset": "medium", "ema": {"start_decay": 0.99, "timescale": 100.0},
                                    "max_steps": 50})
    assert (medium.ema_start_decay, medium.ema_timescale) == (0.99, 100.0)
    with pytest.raises(ConfigError, match=re.escape("ema.scaling='movement'")):
        TrainConfig.from_dict({"kind": "dinosr", "preset": "base", "ema": {"scaling": "movement"}})


# --- the corpus: several readings of each sentence ------------------------------------------------------------------


@pytest.mark.slow  # generates a corpus or a data tree: more than a few seconds
def test_readings_add_jittered_copies_and_keep_the_first_reading(tmp_path: Path) -> None:
    from tests.conftest import require_flite

    require_flite()
    from data.demo import DemoConfig, generate

    base = {**gpu_quick()["demo"], "train_sentences": 3, "train_voices_per_sentence": 2, "dev_sentences": 1,
            "lexical_pairs": 1, "syntactic_pairs": 1, "storycloze_stories": 1}
    one = generate(tmp_path / "one", DemoConfig.from_dict({**base, "train_readings": 1}), threads=2)
    three = generate(tmp_path / "three", DemoConfig.from_dict({**base, "train_readings": 3}), threads=2)
    assert one["counts"]["train"] == 6 and three["counts"]["train"] == 18
    first = pd.read_csv(tmp_path / "one/train/manifest.tsv", sep="\t")
    many = pd.read_csv(tmp_path / "three/train/manifest.tsv", sep="\t").set_index("id")
    for uid in first["id"]:  # the first reading is the one-reading corpus's, bit for bit
        assert (tmp_path / f"one/train/wav/{uid}.wav").read_bytes() == \
            (tmp_path / f"three/train/wav/{uid}.wav").read_bytes()
        lengths = {many.loc[f"{uid}{r}", "num_samples"] for r in ("", "r1", "r2")}
        assert len(lengths) == 3  # each reading has its own tempo draw
    assert 2.5 < three["hours"]["train"] / one["hours"]["train"] < 3.5


def test_whole_text_keeps_dev_and_tsc_endings_out_of_training(tmp_path: Path) -> None:
    from tests.conftest import require_flite

    require_flite()  # the lexicon of sWUGGY still comes from flite
    from data import demo

    sentences = demo.alice_sentences(18)
    cfg = demo.DemoConfig.from_dict({**gpu_quick()["demo"], "voices": ["kal16"], "train_voices_per_sentence": 1,
                                     "train_readings": 1, "lexical_pairs": 1, "syntactic_pairs": 1})
    seen: list = []
    # Synthesis is what takes time; the plan of who reads what is all this test needs.
    monkey = pytest.MonkeyPatch()
    monkey.setattr(demo, "synthesize_all", lambda utts, cfg, threads: seen.extend(utts) or _fake(utts))
    try:
        demo.generate(tmp_path / "c", cfg, threads=1)
    finally:
        monkey.undo()
    train = {u.text for u in seen if u.path.parent.parent.name == "train"}
    dev = {u.text for u in seen if u.path.parent.parent.name == "dev"}
    assert len(dev) == cfg.dev_sentences and not train & dev
    assert len([u for u in seen if u.path.parent.parent.name == "train"]) == \
        len(sentences) - cfg.dev_sentences - cfg.storycloze_stories
    endings = {u.text.split(". ")[-1] for u in seen if "tSC" in str(u.path) and "incorrect" in u.path.name}
    assert len(endings) == cfg.storycloze_stories and not any(e.rstrip(".") in train for e in endings)


def _fake(utts) -> None:
    """What synthesis fills in, without flite: one second of silence-free noise and one phone."""
    from data.audio import SAMPLE_RATE, write_wav

    for u in utts:
        u.path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(u.path, np.random.default_rng(0).normal(0, 0.1, SAMPLE_RATE).astype(np.float32))
        u.num_samples, u.segments = SAMPLE_RATE, [("SIL", 0.0, 0.2), ("AH", 0.2, 0.6), ("SIL", 0.6, 1.0)]


# --- pretraining with learning curves -----------------------------------------------------------------------------


def test_gpu_quick_pretraining_logs_learning_curves(demo_corpus: Path, tmp_path: Path) -> None:
    """The config's encoder, 4 steps of 4 s batches on CPU through eval.curves' entry point (the rule's).

    Narrowed (the medium preset's 512-wide model takes minutes on 2 cores); its 8 layers and 6 codebooks stay.
    """
    import torch

    from data.audio import load_audio
    from data.manifest import read_manifest
    from eval.benchmarks import read_phone_labels
    from eval.curves import main as curves_main
    from eval.diagnose import diagnose
    from spidr.checkpoint import load_model

    torch.set_num_threads(2)
    narrow = {"conv_layers": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, "embed_dim": 64, "num_heads": 4,
              "ffn_dim": 128}
    train = {**gpu_quick()["encoders"]["spidr_medium"]["train"], "max_steps": 4, "curve_interval": 2,
             "model": narrow, "progress": False,
             "data": {"global_batch_samples": 64_000, "batch_samples": 64_000, "num_workers": 0}}
    work, out = tmp_path / "w", tmp_path / "final.pt"
    dev, phones = demo_corpus / "dev/manifest.tsv", demo_corpus / "dev/phones_100hz.jsonl"
    curves_main(["train", "--dev-manifest", str(dev), "--phones", str(phones), "--max-utterances", "4", "--manifest",
                 str(demo_corpus / "train/manifest.tsv"), "--workdir", str(work), "--out", str(out),
                 "--config", json.dumps(train)])
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    curves = [r for r in records if r["split"] == "curves"]
    assert [r["step"] for r in curves] == [0, 2, 4]
    n_dev = 4
    for r in curves:
        assert r["codebook_layers"] == [3, 4, 5, 6, 7, 8] and r["utterances"] == n_dev
        for who in ("teacher", "head"):
            for ppl, active, pnmi in zip(r[f"{who}_ppl"], r[f"{who}_active"], r[f"{who}_pnmi"], strict=True):
                assert 1 <= ppl <= active + 1e-6 <= 256 + 1e-6 and 0 <= pnmi <= 1
    # The last point is what eval.diagnose says of the final checkpoint.
    model = load_model(out, teacher=True)
    rows = read_manifest(dev).head(4)
    report = diagnose(model, [torch.from_numpy(load_audio(p)) for p in rows["path"]], list(rows["id"]),
                      read_phone_labels(phones))
    assert curves[-1]["teacher_active"] == [report[lay]["teacher_assignments"]["active"] for lay in range(3, 9)]
    assert curves[-1]["head_pnmi"] == pytest.approx([report[lay]["head_argmax"]["pnmi"] for lay in range(3, 9)],
                                                    abs=1e-5)
    # The resolved schedule is recorded: the medium preset's recipe scaled to these 4 steps.
    schedule = json.loads((work / "config.json").read_text())["schedule"]
    assert schedule["ema_start_decay"] == pytest.approx(scaled_recipe(4).ema_start_decay)
    assert schedule["ema_scaling"] == "movement" and schedule["freeze_step"] == 2

    curves_main(["plot", "--metrics", f"spidr_medium={work / 'metrics.jsonl'}", "--out", str(tmp_path / "report")])
    points = pd.read_csv(tmp_path / "report/learning_curves.csv")
    dev_points = points[points["source"] == "dev"]
    assert len(dev_points) == 3 * 6 * 7 and set(dev_points["step"]) == {0, 2, 4}
    pnmi = dev_points[(dev_points["metric"] == "head_pnmi") & (dev_points["step"] == 4)].sort_values("layer")
    assert list(pnmi["value"]) == pytest.approx(curves[-1]["head_pnmi"])
    assert (tmp_path / "report/learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_curve_interval_without_a_probe_is_an_error_naming_the_entry_point(tmp_path: Path) -> None:
    from spidr.train import train

    with pytest.raises(ConfigError, match=re.escape("python -m eval.curves train")):
        train({"preset": "tiny", "curve_interval": 2}, str(tmp_path / "m.tsv"), str(tmp_path / "w"), None)


def test_gpu_quick_dry_run_plans_every_stage_and_the_learning_curves(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(GPU_QUICK), "--replace-workflow-config", "-n", "-p"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rule in ("demo_data", "pretrain", "fit_kmeans", "quantize", "train_lm", "eval_slm21", "eval_storycloze",
                 "eval_abx_units", "eval_unit_quality", "report", "learning_curves"):
        assert re.search(rf"^{rule}\s+\d+", out.stdout, re.M), rule
    assert "eval.curves train --dev-manifest resources/demo/dev/manifest.tsv " \
           "--phones resources/demo/dev/phones_100hz.jsonl --manifest resources/demo/train/manifest.tsv" in out.stdout
    assert "eval.curves plot --metrics spidr_medium=work/pretrain/spidr_medium/metrics.jsonl" in out.stdout
