"""The benchmark scripts still run and print the JSON they promise (tiny settings on CPU; no timing is checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.units_helpers import make_corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # generates a corpus or a data tree: more than a few seconds
def test_bench_spidr_prints_train_json_with_a_profile():
    cmd = [sys.executable, "benchmarks/bench_spidr.py", "--preset", "tiny", "--device", "cpu", "--modes", "train",
           "--steps", "1", "--warmup", "1", "--batch-seconds", "2", "--item-seconds", "1", "--threads", "1",
           "--profile"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert "extract_ours" not in report and report["train_speedup_vs_official_settings"] > 0
    for variant in ("train_ours", "train_ours_official_settings"):
        run = report[variant]
        assert run["batch"] == 2 and run["audio_seconds_per_second"] > 0 and run["tflops_per_step"] > 0
        ops = run["profile_top_ops"]
        assert ops and all(op["ms_per_step"] >= 0 and op["calls_per_step"] >= 0 for op in ops)
        assert any("conv" in op["op"] for op in ops)


@pytest.mark.slow  # ~20 stage processes, each importing torch: about a minute on 2 cores
def test_bench_scale_prints_rss_growth_and_the_sharded_equals_unsharded_check(tmp_path):
    manifest = make_corpus(tmp_path / "corpus", [2.0, 3.0, 2.5, 4.0, 2.0, 3.5])
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--scales", "1", "2", "--shards", "2", "--spidr-scales",
           "--shard-hours", "0.001", "--manifest", str(manifest), "--out", str(tmp_path / "scale.json")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert json.loads((tmp_path / "scale.json").read_text()) == report
    assert report["settings"]["encoders_ran_at_scales"] == {"mfcc": [1, 2], "spidr-small": []}
    stages = ["manifest", "extract/mfcc", "gather/mfcc", "dedup/mfcc", "pack/mfcc"]
    for scale, files in (("1", 6), ("2", 12)):
        run = report["scales"][scale]
        assert run["files"] == files and sorted(run["stages"]) == sorted(stages)
        for stage in run["stages"].values():
            assert stage["peak_rss_mb"] > 0 and stage["wall_s"] > 0 and stage["throughput"] > 0
            assert stage["throughput_unit"] and stage["n"] > 0 and "rss_above_import_mb" in stage
        assert len(run["stages"]["extract/mfcc"]["shards"]) == 2
    growth = report["rss_growth"]["stages"]
    assert sorted(growth) == sorted(stages) and all(g["ratio"] > 0 and "pass" in g for g in growth.values())
    (check,) = report["sharded_equals_unsharded"]["checks"]
    assert check["encoder"] == "mfcc" and check["equal"] and report["sharded_equals_unsharded"]["all_equal"]
    assert len(report["machine"]["load_avg_start"]) == 3 and report["code_version"]
