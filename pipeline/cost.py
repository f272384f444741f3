"""What a planned run will cost, before it is launched: GPU-hours and wall time of the planned jobs, per rule and in
total, from the throughputs measured on one H100 (README, "Performance") and the jobs' resources.

    snakemake -n --profile slurm --workflow-profile slurm/profiles/2x8 --configfile configs/paper.yaml \\
        --replace-workflow-config all > plan.txt
    python -m pipeline.cost plan.txt --configfile configs/paper.yaml --gpus 16 [--hours librilight60k=57700]

Work per job: pretraining = steps x global batch (audio seconds) / 3,930 audio-s/s per GPU; an LM = steps x batch x
context (tokens) / 381,404 tokens/s per GPU; unit, feature and codebook-probability extraction and k-means fits =
hours of audio / 4,418x real time per GPU. Corpus hours come from an existing manifest, a subset's `hours`, or
--hours; a benchmark set's from its manifest when it exists (else it counts as minutes: it is). GPU-hours = work;
a job's wall time = its GPU-hours / its GPUs; a rule's = max(its longest job, its GPU-hours / --gpus); the total
adds the rules' wall times (stages one after the other, no queueing). CPU-only jobs (manifests, gathers, dedup, LM
packing, ABX, reports) are listed with their count and are not costed in GPU-hours.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.cli import run_main
from common.config import ConfigError
from pipeline.config import lm_train_config, pretrain_config

# Measured on one H100 80GB (README, "Performance"): per GPU.
PRETRAIN_AUDIO_S_PER_S = 3930.0
LM_TOKENS_PER_S = 381_404.0
EXTRACTION_REALTIME = 4418.0
SAMPLE_RATE = 16_000
FRAME_RATE = 50
GPU_RULES = ("pretrain", "train_lm", "quantize", "fit_kmeans", "extract_features", "extract_codebook_probs")


@dataclass
class Job:
    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)

    def gpus(self) -> int:
        """GPUs of the job: nodes x K of a gres gpu[:type]:K, else `gpu`."""
        nodes = int(self.resources.get("nodes", "1") or 1)
        gres = re.fullmatch(r"gpu(?::[\w.\-]+)?:(\d+)", self.resources.get("gres", ""))
        if gres:
            return nodes * int(gres.group(1))
        return int(self.resources.get("gpu", "0") or 0)


def parse_dry_run(text: str) -> list[Job]:
    """Every job of a Snakemake dry run's output (jobs inside a group job too), with wildcards and resources."""
    jobs: list[Job] = []
    current: Job | None = None
    for line in text.splitlines():
        head = re.match(r"^\s*(?:local)?rule (\w+):$", line)
        if head:
            current = Job(head.group(1))
            jobs.append(current)
            continue
        item = re.match(r"^\s+(wildcards|resources): (.*)$", line)
        if item and current is not None:
            pairs = dict(p.split("=", 1) for p in item.group(2).split(", ") if "=" in p)
            getattr(current, item.group(1)).update(pairs)
    return [job for job in jobs if job.rule != "all"]


def manifest_hours(path: Path) -> float | None:
    """Hours of audio of a manifest (its num_samples column at 16 kHz), None when it does not exist yet."""
    if not path.is_file():
        return None
    with path.open() as f:
        rows = csv.DictReader(f, delimiter="\t")
        return sum(int(row["num_samples"]) for row in rows) / SAMPLE_RATE / 3600


class Hours:
    """Hours of audio of each dataset the plan extracts from."""

    def __init__(self, config: dict[str, Any], workdir: Path, given: dict[str, float]) -> None:
        self.config, self.workdir, self.given = config, workdir, given

    def corpus(self, name: str) -> float:
        if name in self.given:
            return self.given[name]
        entry = self.config["corpora"][name]
        if entry.get("source") == "subset":
            return float(entry["hours"])
        manifest = self.workdir / f"resources/corpora/{name}/manifest.tsv"
        if entry.get("source") == "manifest":
            manifest = Path(entry["manifest"])
        hours = manifest_hours(manifest)
        if hours is None:
            raise ConfigError(f"corpus {name}: its manifest {manifest} does not exist yet; give its size with "
                              f"--hours {name}=HOURS")
        return hours

    def dataset(self, dataset: str) -> float:
        """`corpus-NAME` or `BENCHMARK-SET`; a benchmark set without a manifest yet counts as 0 (minutes of GPU)."""
        kind, name = dataset.split("-", 1)
        if kind == "corpus":
            return self.corpus(name)
        return manifest_hours(self.workdir / f"resources/benchmarks/{kind}/{name}/manifest.tsv") or 0.0


def gpu_hours(job: Job, config: dict[str, Any], hours: Hours) -> float:
    """GPU-hours of one GPU job from the measured throughputs."""
    wc = job.wildcards
    if job.rule == "pretrain":
        train = pretrain_config(config, wc["encoder"])
        audio_s = train.max_steps * train.data.global_batch_samples / SAMPLE_RATE
        return audio_s / PRETRAIN_AUDIO_S_PER_S / 3600
    if job.rule == "train_lm":
        train = lm_train_config(config, wc["lm"])
        if train.max_steps is None:
            raise ConfigError(f"lms.{wc['lm']}.train: no max_steps, so the cost depends on the packed corpus; set "
                              "max_steps (or max_tokens) to cost it before running")
        steps = train.total_steps() if train.max_epochs is None else train.max_steps
        return steps * train.batch_size * train.context_length / LM_TOKENS_PER_S / 3600
    if job.rule == "quantize":
        return hours.dataset(wc["dataset"]) / int(wc["nshards"]) / EXTRACTION_REALTIME
    if job.rule == "fit_kmeans":
        fit = config["units"][wc["units"]].get("fit") or {}
        return fit.get("max_frames", 2_000_000) / FRAME_RATE / 3600 / EXTRACTION_REALTIME
    if job.rule in ("extract_features", "extract_codebook_probs"):
        return hours.dataset(f"{wc['benchmark']}-abx") / EXTRACTION_REALTIME
    return 0.0


def report(jobs: list[Job], config: dict[str, Any], hours: Hours, gpus: int) -> str:
    """The per-rule table and the total."""
    per_rule: dict[str, list[tuple[float, int]]] = defaultdict(list)
    cpu: dict[str, int] = defaultdict(int)
    for job in jobs:
        if job.rule in GPU_RULES and job.gpus() > 0:
            per_rule[job.rule].append((gpu_hours(job, config, hours), job.gpus()))
        else:
            cpu[job.rule] += 1
    lines = [f"{'rule':<24} {'jobs':>5} {'GPUs/job':>8} {'GPU-hours':>10} {'wall h':>8}"]
    total_gpu_h = total_wall = 0.0
    for rule in GPU_RULES:
        if rule not in per_rule:
            continue
        costs = per_rule[rule]
        gpu_h = sum(c for c, _ in costs)
        longest = max(c / g for c, g in costs)
        wall = max(longest, gpu_h / gpus)
        per_job = sorted({g for _, g in costs})
        lines.append(f"{rule:<24} {len(costs):>5} {','.join(map(str, per_job)):>8} {gpu_h:>10.1f} {wall:>8.1f}")
        total_gpu_h += gpu_h
        total_wall += wall
    lines.append(f"{'total (GPU jobs)':<24} {sum(map(len, per_rule.values())):>5} {'':>8} {total_gpu_h:>10.1f} "
                 f"{total_wall:>8.1f}")
    if cpu:
        lines.append(f"not costed (CPU jobs, and scoring: minutes of GPU each): {sum(cpu.values())} jobs: "
                     + ", ".join(f"{rule} {n}" for rule, n in sorted(cpu.items())))
    lines.append(f"Measured per-GPU throughputs (one H100): pretraining {PRETRAIN_AUDIO_S_PER_S:,.0f} audio-s/s, LM "
                 f"{LM_TOKENS_PER_S:,.0f} tokens/s, extraction {EXTRACTION_REALTIME:,.0f}x real time; wall time on "
                 f"{gpus} GPUs, stages one after the other, no queueing.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dry_run", type=Path, help="the output of `snakemake -n ...` (- for stdin)")
    parser.add_argument("--configfile", type=Path, nargs="+", required=True, help="the run's config file(s)")
    parser.add_argument("--config", nargs="*", default=[], help="KEY=VALUE overrides, as given to snakemake")
    parser.add_argument("--gpus", type=int, default=16, help="GPUs the run may use at once (default 16)")
    parser.add_argument("--hours", nargs="*", default=[], metavar="CORPUS=HOURS",
                        help="hours of a corpus whose manifest does not exist yet")
    parser.add_argument("--directory", type=Path, default=Path("."), help="the run's working directory")
    opts = parser.parse_args(argv)
    if opts.gpus < 1:
        raise ConfigError(f"--gpus {opts.gpus}: expected at least 1")
    config: dict[str, Any] = {}
    for path in opts.configfile:
        config.update(yaml.safe_load(path.read_text()) or {})
    for item in opts.config:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    from pipeline import grids

    config.update(grids.expand_grids(config))
    given = {}
    for item in opts.hours:
        name, _, value = item.partition("=")
        try:
            given[name] = float(value)
        except ValueError:
            raise ConfigError(f"--hours {item!r}: expected CORPUS=HOURS, e.g. librilight60k=57700") from None
    text = sys.stdin.read() if str(opts.dry_run) == "-" else opts.dry_run.read_text()
    jobs = parse_dry_run(text)
    if not jobs:
        raise ConfigError(f"{opts.dry_run}: no jobs in it; give the output of `snakemake -n` (without --quiet)")
    print(report(jobs, config, Hours(config, opts.directory, given), opts.gpus))


if __name__ == "__main__":
    run_main(main)
