"""The whole DAG for real on configs/test.yaml, on CPU: every stage runs, the report has every experiment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "configs/test.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_the_test_config_runs_end_to_end(tmp_path: Path) -> None:
    from tests.conftest import require_flite

    require_flite()
    out = run_snakemake(tmp_path)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    config = yaml.safe_load((REPO / "configs/test.yaml").read_text())

    # The report: one row per experiment, with LM metrics and unit metrics side by side.
    report = tmp_path / "results/report"
    for name in ("table.md", "table.csv", "table.tex"):
        assert (report / name).stat().st_size > 0, name
    table = (report / "table.md").read_text()
    for experiment in config["experiments"]:
        assert experiment in table or config["experiments"][experiment]["units"] in table, experiment

    # Every metrics file records what produced it, and accuracies are probabilities.
    metrics = sorted((tmp_path / "results/eval").rglob("*.json"))
    assert len(metrics) >= 2 * 4 + 2 * 3
    for path in metrics:
        record = json.loads(path.read_text())
        text = json.dumps(record)
        assert "code_version" in text, path
    lexical = json.loads((tmp_path / "results/eval/experiments/mfcc_kmeans/demo/lexical.json").read_text())
    assert "code_version" in json.dumps(lexical)

    # Units and dedup invariants on a real output.
    frames = pd.read_parquet(tmp_path / "results/units/mfcc_kmeans/corpus-demo/frames.parquet")
    dedup = pd.read_parquet(tmp_path / "results/units/mfcc_kmeans/corpus-demo/dedup.parquet")
    assert list(frames["id"]) == list(dedup["id"])
    for f, d, n in zip(frames["units"], dedup["units"], dedup["durations"], strict=True):
        assert n.sum() == len(f) and len(d) == len(n)

    # The LM is a plain Hugging Face directory whose vocabulary covers the units, and it gives finite logits.
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "results/lm/mfcc_kmeans/tiny/model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    k = config["units"]["mfcc_kmeans"]["k"]
    assert model.config.vocab_size >= k
    logits = model(torch.arange(8).unsqueeze(0)).logits
    assert logits.shape == (1, 8, model.config.vocab_size) and bool(torch.isfinite(logits).all())

    # A second run has nothing to do.
    again = run_snakemake(tmp_path, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
