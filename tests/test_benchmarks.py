"""The benchmark scripts still run and print the JSON they promise (tiny settings on CPU; no timing is checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
