"""The cluster profiles without a cluster: every rule has explicit resources in every workflow profile, the sbatch
lines the plugin builds (node constraint, QoS, requeue, job name, kept logs), the training layouts a dry run prints
and refuses, and the paper DAG's bundling of short jobs into fewer SLURM jobs.

The sbatch line comes from a recording `sbatch` first on PATH (with stand-ins for the query commands the plugin
calls before submitting): it writes its arguments to a file and fails the submission, so Snakemake stops at once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError
from pipeline.layout import plan

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = [str(VENV_BIN / "snakemake")]
# The workflow profiles a run can use (profiles/default is auto-loaded; `--workflow-profile` replaces it).
WORKFLOW_PROFILES = ("profiles/default", "slurm/profiles/2x8")


def _rules() -> list[str]:
    out = subprocess.run([*SNAKEMAKE, "--list-rules"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [line.split()[0] for line in out.stdout.splitlines() if re.match(r"\w", line)]


def _set_resources(profile: str) -> dict[str, dict]:
    return yaml.safe_load((REPO / profile / "config.yaml").read_text()).get("set-resources") or {}


def _local_rules() -> set[str]:
    """Rules marked `localrule: True` (they run inside the Snakemake process, never through sbatch), and `all`."""
    local = {"all"}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), re.M):
            if "localrule: True" in body:
                local.add(name)
    return local


@pytest.mark.parametrize("profile", WORKFLOW_PROFILES)
def test_every_rule_has_explicit_resources_in_every_workflow_profile(profile: str) -> None:
    """A rule missing from a workflow profile gets default-resources: 4 GB, 60 minutes, no GPU (issue 21, case 5)."""
    rules = set(_rules()) - {"all"}
    assert {"pretrain", "train_lm", "extract_codebook_probs", "gather_units", "pack_lm_data"} <= rules, rules
    per_rule = _set_resources(profile)
    assert not rules - set(per_rule), f"{profile}: no set-resources for {sorted(rules - set(per_rule))}"
    assert not set(per_rule) - rules, f"{profile}: set-resources for rules that do not exist: {set(per_rule) - rules}"
    for rule, values in per_rule.items():
        assert {"mem_mb", "runtime"} <= set(values), (profile, rule, values)


def test_the_cluster_profile_leaves_per_rule_resources_to_the_workflow_profiles() -> None:
    """slurm/config.yaml's set-resources would be replaced wholesale by a workflow profile's (top-level keys replace),
    so per-rule compute lives only in the workflow profiles checked above; its default-resources are a fallback."""
    cluster = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert "set-resources" not in cluster and "set-threads" not in cluster
    assert {"slurm_account", "slurm_partition", "mem_mb", "runtime"} <= set(cluster["default-resources"])


# --- the sbatch line -----------------------------------------------------------------------------------------------

RECORDING_SBATCH = """#!{python}
import json, os, sys
with open(os.environ["SBATCH_RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print("sbatch: error: Batch job submission failed: recorded by the test's sbatch", file=sys.stderr)
sys.exit(1)
"""


def _fake_slurm(bin_dir: Path) -> None:
    """A recording sbatch and stand-ins for what the plugin asks before submitting (account, MinJobAge)."""
    bin_dir.mkdir()
    scripts = {
        "sbatch": RECORDING_SBATCH.format(python=sys.executable),
        "sacctmgr": "#!/bin/sh\necho acct_x\n",
        "scontrol": "#!/bin/sh\necho 'MinJobAge = 300 sec'\n",
        **{name: "#!/bin/sh\nexit 0\n" for name in ("sinfo", "squeue", "sacct", "scancel", "sshare")},
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def _sbatch_lines(tmp_path: Path, *args: str) -> tuple[list[list[str]], str]:
    """The sbatch argument lists of the jobs ready at the start of `snakemake --profile slurm ARGS` (and its output),
    run in a working directory of its own (the plugin puts its logs under the directory Snakemake starts in)."""
    _fake_slurm(tmp_path / "bin")
    record = tmp_path / "sbatch.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(PATH=os.pathsep.join([str(tmp_path / "bin"), str(VENV_BIN), env.get("PATH", "")]),
               SBATCH_ACCOUNT="acct_x", SBATCH_PARTITION="part_y", SBATCH_RECORD=str(record))
    (tmp_path / "wd").mkdir()
    out = subprocess.run([*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--profile", str(REPO / "slurm"),
                          "--configfile", str(REPO / "config.yaml"), "--retries", "0",
                          "--slurm-init-seconds-before-status-checks", "1", *args],
                         cwd=tmp_path / "wd", env=env, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return lines, out.stdout + out.stderr


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` / `--name=VALUE` / `-C VALUE` in an argument list."""
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
    return None


def test_constraint_and_qos_reach_the_sbatch_line_through_the_plugins_resources(tmp_path: Path) -> None:
    """Node features and QoS as the plugin's `constraint` / `qos` resources (slurm_extra may not hold them), the
    requeue flag, the job name and the kept SLURM log, as sbatch receives them."""
    profile = tmp_path / "profile"
    profile.mkdir()
    config = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    config["set-resources"]["demo_data"].update(constraint="h100&ib", qos="high")
    (profile / "config.yaml").write_text(yaml.safe_dump(config))
    lines, log = _sbatch_lines(tmp_path, "--workflow-profile", str(profile), "resources/demo/info.json")
    demo = [argv for argv in lines if _option(argv, "--comment") == "rule_demo_data"]
    assert len(demo) == 1, (lines, log[-3000:])
    argv = demo[0]
    assert _option(argv, "-C") == "h100&ib" and _option(argv, "--qos") == "high", argv
    assert "--requeue" in argv, argv
    assert (_option(argv, "-A"), _option(argv, "-p")) == ("acct_x", "part_y"), argv
    assert _option(argv, "--job-name").startswith("textless-slm_"), argv
    assert _option(argv, "--output") == str(tmp_path / "wd" / "logs" / "slurm" / "rule_demo_data" / "%j.log"), argv
    assert (_option(argv, "--mem"), _option(argv, "-t")) == ("2000", "30"), argv
    assert "recorded by the test's sbatch" in log


def test_a_constraint_in_slurm_extra_is_refused_by_the_plugin(tmp_path: Path) -> None:
    """What slurm/README.md used to advise: the plugin rejects it before submitting anything."""
    lines, log = _sbatch_lines(tmp_path, "resources/demo/info.json", "--set-resources",
                               "demo_data:slurm_extra='--constraint=h100'")
    assert not lines
    assert "The --node-constraints option is not allowed in the 'slurm_extra' parameter" in log, log[-3000:]


# --- training layouts --------------------------------------------------------------------------------------------


def _paper_lm(micro_batch: int) -> dict:
    config = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    config["lms"]["opt125m"]["train"]["micro_batch_size"] = micro_batch
    return config


def test_the_issues_lm_layout_is_refused_naming_the_keys_and_the_sizes_that_work() -> None:
    """The paper's LM (batch 256, micro-batch 32) on 2 nodes x 8 GPUs: 256 is no multiple of 32 x 16."""
    config = _paper_lm(32)
    resources = {"pretrain": {"nodes": 2, "gpu": 0, "gres": "gpu:8"}, "train_lm": {"nodes": 2, "gpu": 0,
                                                                                   "gres": "gpu:8"}}
    with pytest.raises(ConfigError) as err:
        plan(config, resources)
    message = str(err.value)
    assert "train_lm opt125m on 16 process(es) (nodes=2 gres=gpu:8)" in message, message
    assert "'lms.opt125m.train.batch_size' (256)" in message and "'lms.opt125m.train.micro_batch_size' 32" in message
    assert "World sizes that reach it: [1, 2, 4, 8]" in message and "micro_batch_size in [1, 2, 4, 8, 16]" in message
    assert "pretrain" not in message.split("\n")[1]  # pretraining's 16 x 3.8M = 60.8M is fine


def test_the_layouts_that_work_are_described() -> None:
    lines = plan(_paper_lm(16), {"pretrain": {"nodes": 2, "gres": "gpu:8"}, "train_lm": {"nodes": 2, "gres": "gpu:8"}})
    assert ("train_lm opt125m (nodes=2 gres=gpu:8): 16 process(es) x 1 accumulation x 16 sequences = 256 sequences "
            "(262144 tokens) per step") in lines, lines
    assert any(line.startswith("pretrain spidr_base (nodes=2 gres=gpu:8): 16 process(es) x 1 accumulation x "
                               "3800000 samples = 60800000 samples") for line in lines), lines
    lines = plan(_paper_lm(32), {"train_lm": {"gpu": 1}})
    assert "train_lm opt125m (gpu=1): 1 process(es) x 8 accumulation x 32 sequences = 256 sequences" in lines[-1]


def test_a_profile_whose_layout_cannot_work_stops_the_dry_run(tmp_path: Path) -> None:
    """The workflow profile decides the world size; the error comes when the workflow is planned, before any job."""
    profile = tmp_path / "profile"
    profile.mkdir()
    config = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    config["set-resources"]["train_lm"].update(gpu=3)  # the demo LM: batch 16, micro-batch 16
    (profile / "config.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run([*SNAKEMAKE, "-n", "--directory", str(tmp_path / "wd"), "--configfile", "config.yaml",
                          "--workflow-profile", str(profile)], cwd=REPO, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "train_lm tiny on 3 process(es) (gpu=3): 'lms.tiny.train.batch_size' (16)" in text, text[-3000:]
    assert "World sizes that reach it: [1]" in text and "Building DAG" not in text


# --- the paper recipe's plan on the 2x8 profile ----------------------------------------------------------------


def _paper_data(root: Path) -> None:
    """An empty file or folder at every data path of configs/paper.yaml: planning needs only their existence."""
    config = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    for corpus in config["corpora"].values():
        if "root" in corpus:
            (root / corpus["root"]).mkdir(parents=True, exist_ok=True)
    for bench in config["benchmarks"].values():
        for key, value in bench.items():
            if key in ("source", "of"):
                continue
            path = root / value
            if path.suffix in (".tsv", ".item", ".jsonl"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
                if key in ("lexical", "syntactic"):
                    (path / "gold.csv").touch()
    for encoder in config["encoders"].values():
        if "checkpoint" in encoder:
            (root / encoder["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
            (root / encoder["checkpoint"]).touch()


def sbatch_jobs(dry_run: str, local_rules: set[str]) -> tuple[Counter, Counter]:
    """(single jobs per rule, group jobs per group) that a dry run's plan submits; local rules run in-process.
    Jobs inside a group job are printed indented, so `^rule X:` are the jobs submitted on their own."""
    single = Counter(r for r in re.findall(r"^rule (\w+):$", dry_run, re.M) if r not in local_rules)
    return single, Counter(re.findall(r"\] Group job (\w+)", dry_run))


def test_the_paper_plan_on_2x8_prints_every_layout_and_bundles_short_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _paper_data(data)
    env = {**os.environ, "SBATCH_ACCOUNT": "acct_x", "SBATCH_PARTITION": "part_y"}
    out = subprocess.run([*SNAKEMAKE, "-n", "--profile", "slurm", "--workflow-profile", "slurm/profiles/2x8",
                          "--configfile", "configs/paper.yaml", "--replace-workflow-config", "--config",
                          f"data_root={data}", "--directory", str(tmp_path / "wd")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    layouts = re.findall(r"^    (pretrain|train_lm) (\S+) \((.*?)\): (\d+) process\(es\)", text, re.M)
    assert {(rule, res, world) for rule, _, res, world in layouts} == {("pretrain", "nodes=2 gres=gpu:8", "16"),
                                                                       ("train_lm", "gpu=1", "1")}, layouts
    # pretrain's resources are in the dry run (no `message:` hides them)
    pretrain = re.search(r"^rule pretrain:\n(?:    .*\n)*?    resources: (.*)$", text, re.M)
    assert pretrain and "nodes=2" in pretrain.group(1) and "gres=gpu:8" in pretrain.group(1), text[-2000:]
    single, groups = sbatch_jobs(text, _local_rules())
    jobs = sum(int(n) for n in re.findall(r"^total\s+(\d+)$", text, re.M)[:1])
    every = Counter(re.findall(r"^(?:    )?rule (\w+):$", text, re.M))
    local = sum(n for rule, n in every.items() if rule in _local_rules())
    submitted = sum(single.values()) + sum(groups.values())
    # each benchmark set's units chain (its extraction shard, gather, dedup) is one job; a corpus's jobs stay apart
    assert set(groups) == {"benchmark_units"}, groups
    alone = re.findall(r"^rule (?:quantize|gather_units|dedup):\n(?:    .*\n)*?    wildcards: .*dataset=([\w-]+)",
                       text, re.M)
    assert alone and all(dataset.startswith("corpus-") for dataset in alone), sorted(set(alone))
    assert submitted <= 0.8 * (jobs - local), (submitted, jobs, local, single, groups)
