"""pipeline.cost: GPU-hours and wall time of a planned run from the measured throughputs, per rule and in total."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A dry run's output as Snakemake prints it: a job on its own, and jobs inside a group job (indented).
DRY_RUN = """\
[Sun Dec  6 12:49:09 2026]
rule pretrain:
    input: resources/corpora/librispeech960/manifest.tsv
    output: results/encoders/spidr_base/checkpoint.pt
    wildcards: encoder=spidr_base
    resources: tmpdir=/tmp, gpu=0, nodes=2, gres=gpu:8, mem_mb=400000, mem=400 GB, runtime=1440, tasks=2
[Sun Dec  6 12:49:09 2026]
rule train_lm:
    wildcards: units=spidr_codebook_l6, lm=opt125m
    resources: tmpdir=/tmp, gpu=1, nodes=1, gres=, mem_mb=64000, runtime=1440
[Sun Dec  6 12:49:09 2026] Group job benchmark_units (jobs in lexicogr. order):
    [Sun Dec  6 12:49:09 2026]
    rule quantize:
        wildcards: units=spidr_codebook_l6, dataset=corpus-librilight6k, shard=0, nshards=2
        resources: tmpdir=/tmp, gpu=1, mem_mb=32000, runtime=720
    [Sun Dec  6 12:49:09 2026]
    rule gather_units:
        wildcards: units=spidr_codebook_l6, dataset=dev-abx
        resources: tmpdir=/tmp, mem_mb=4000, runtime=30
"""


def _cost(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "plan.txt").write_text(DRY_RUN)
    return subprocess.run([sys.executable, "-m", "pipeline.cost", str(tmp_path / "plan.txt"), "--configfile",
                           "configs/paper.yaml", "--directory", str(tmp_path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _row(out: str, rule: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(rule + " "))


def test_gpu_hours_and_wall_time_per_rule_and_in_total(tmp_path: Path) -> None:
    done = _cost(tmp_path, "--gpus", "16")
    assert done.returncode == 0, done.stderr
    # 400k steps x 60.8M samples = 1.52e9 audio-s / 3,930 per GPU = 107.4 GPU-h, on 16 GPUs 6.7 h
    assert _row(done.stdout, "pretrain") == ["pretrain", "1", "16", "107.4", "6.7"]
    # 50k steps x 256 x 1,024 tokens / 381,404 tokens/s = 9.5 GPU-h on one GPU
    assert _row(done.stdout, "train_lm") == ["train_lm", "1", "1", "9.5", "9.5"]
    # a 6k-hour subset in 2 shards: 3,000 h / 4,418x = 0.68 GPU-h
    assert _row(done.stdout, "quantize") == ["quantize", "1", "1", "0.7", "0.7"]
    assert _row(done.stdout, "total") == ["total", "(GPU", "jobs)", "3", "117.7", "16.9"]
    assert "not costed (CPU jobs, and scoring: minutes of GPU each): 1 jobs: gather_units 1" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--gpus", "0"), "error: --gpus 0: expected at least 1"),
    (("--hours", "librilight6k=lots"), "error: --hours 'librilight6k=lots': expected CORPUS=HOURS"),
])
def test_bad_options_are_one_line_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    done = _cost(tmp_path, *args)
    assert done.returncode == 1 and done.stderr.startswith(message), done.stderr
