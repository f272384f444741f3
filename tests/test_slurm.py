"""SLURM end-to-end: a real two-node cluster from Debian packages (on this host) runs `snakemake --profile slurm`:
the workflow, retries, time limits, two-node training and a real preemption.

scripts/slurm/local_cluster.sh starts munged, MariaDB, slurmdbd, slurmctld and two slurmd (so the executor plugin's
default `sacct` status path is the one tested) and stops each of them by PID, also when a test fails. Every
Snakemake run is wrapped in `timeout -s INT`: a mis-set status query makes the plugin wait forever, ignoring TERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.slurm_cluster import SYSTEM_PATH

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# What local_cluster.sh registers; the test passes them the way a user does (sbatch's own variables).
ACCOUNT, PARTITION = "ci", "cpu"
# Seconds, per Snakemake run, far above the expected 3-5 min and 1-2 min: the guards against a hung status query.
WORKFLOW_TIMEOUT_S = 900
FAIL_TIMEOUT_S = 300
# The plugin waits 40 s before its first status query; on a test cluster whose jobs last seconds, ask sooner.
POLL = ("--slurm-init-seconds-before-status-checks", "2")
# Training steps that outlast one 1-minute job even on a fast idle machine (tiny steps take ~0.04-0.1 s on CPU and
# each job stops about 30 s before its limit), so at least one stop and resume always happens.
LM_STEPS, SPIDR_STEPS = 1200, 1200


def _node_memory_mb() -> int:
    """RealMemory of the cluster's single node."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%m"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _repo_copy(dest: Path) -> Path:
    """The repository as a user's checkout has it (tracked and untracked files that git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:  # not a git checkout (e.g. an exported tarball)
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "results", "resources", "logs", "work", ".snakemake", "__pycache__", "*.egg-info",
            ".*_cache"))
    return dest


def _small_config() -> dict:
    """configs/test.yaml cut to its first experiment, without ABX on continuous features.

    That still runs every stage (pretraining, units, dedup, LM training and scoring, every evaluation, report) but
    in about half the jobs: each SLURM job costs two Snakemake start-ups on top of its work.
    """
    config = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    first = next(iter(config["experiments"]))
    config["experiments"] = {first: config["experiments"][first]}
    config.setdefault("eval", {})["abx_features"] = False
    return config


def _env(**extra: str) -> dict[str, str]:
    """The user's shell: venv first on PATH, no leftover SLURM job context, account and partition exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), SYSTEM_PATH])
    env.update({"SBATCH_ACCOUNT": ACCOUNT, "SBATCH_PARTITION": PARTITION, "OMP_NUM_THREADS": "1", **extra})
    return env


def _snakemake(repo: Path, *args: str, timeout_s: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`snakemake --profile slurm ARGS` from the root of `repo`, as a user types it; returns (exit code, output)."""
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout_s), str(VENV_BIN / "snakemake"), "--profile", "slurm",
           *args]
    out = subprocess.run(cmd, cwd=repo, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=timeout_s + 60)
    return out.returncode, out.stdout


def _jobs(log: str, local: bool = False) -> Counter:
    """Jobs per rule in a Snakemake output: "rule X:" headers (a dry run prints every job so; a real run prints
    the jobs it submits to SLURM so), indented inside a "Group job G" block for the jobs bundled into one SLURM job,
    or with `local` the "localrule X:" jobs a real run ran on this machine."""
    if local:
        return Counter(re.findall(r"^localrule (\w+):$", log, re.M))
    return Counter(re.findall(r"^(?:    )?rule (\w+):$", log, re.M))


# The workflow's `group:` names (workflow/rules/*.smk): jobs bundled into one SLURM job each.
GROUPS = ("benchmark_units",)


def _submissions(log: str) -> Counter:
    """SLURM jobs per rule (or per group, for a "Group job G" of bundled jobs) that a run submitted."""
    return Counter(re.findall(r"^rule (\w+):$", log, re.M) + re.findall(r"\] Group job (\w+)", log))


def _resources(dry_run: str) -> dict[str, dict[str, str]]:
    """Each rule's resources in a dry run (those of its first job)."""
    resources: dict[str, dict[str, str]] = {}
    rule = None
    for line in dry_run.splitlines():
        head = re.match(r"rule (\w+):$", line)
        if head:
            rule = head.group(1)
        elif rule and line.startswith("    resources: "):
            pairs = (item.split("=", 1) for item in line.removeprefix("    resources: ").split(", "))
            resources.setdefault(rule, dict(pairs))
    return resources


def _workflow_profile_set_resources(repo: Path) -> dict[str, dict]:
    """Per-rule resources of the workflow profile Snakemake auto-loads (profiles/default next to the Snakefile)."""
    for name in ("profile.yaml", "config.yaml"):
        path = repo / "profiles" / "default" / name
        if path.is_file():
            return (yaml.safe_load(path.read_text()) or {}).get("set-resources") or {}
    return {}


def _cpu_cluster_resources(repo: Path, planned: dict[str, dict[str, str]], node_mem_mb: int) -> list[str]:
    """`--set-resources` for this CPU-only node: no GPUs, memory within the node.

    On the command line, --set-resources replaces the workflow profile's set-resources wholesale, so every rule's
    per-rule resources are passed on, changed only where this node cannot satisfy them.
    """
    per_rule = {rule: dict(values) for rule, values in _workflow_profile_set_resources(repo).items()}
    changed = False
    # A rule with a `message:` (pretrain) prints no resources in a dry run: the profile's values count too.
    profile = {rule: {k: str(v) for k, v in values.items()} for rule, values in per_rule.items()}
    for rule, resources in [*planned.items(), *profile.items()]:
        if resources.get("gpu", "0") != "0" or any(k in resources for k in ("gpu_model", "gres")):
            per_rule.setdefault(rule, {}).update(gpu=0)
            per_rule[rule].pop("gpu_model", None)
            per_rule[rule].pop("gres", None)
            changed = True
        if resources.get("mem_mb", "0").isdigit() and int(resources["mem_mb"]) > node_mem_mb // 2:
            per_rule.setdefault(rule, {})["mem_mb"] = node_mem_mb // 2
            changed = True
    if not changed:
        return []
    return ["--set-resources", *[f"{rule}:{key}={value}" for rule, values in per_rule.items()
                                 for key, value in values.items()]]


def _sacct() -> list[dict[str, str]]:
    """Every job the cluster ran: rule (from the plugin's --comment), state, account, partition, requested TRES."""
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-S", "now-1days", "-o",
                          "JobID,State,Account,Partition,ReqTRES,Comment"],
                         capture_output=True, text=True, check=True)
    jobs = []
    for line in out.stdout.splitlines():
        job_id, state, account, partition, tres, comment = line.split("|", 5)
        # a group job's comment is rule_<group>_<its rules, joined by "_">
        rule = (re.match(rf"rule_({'|'.join(GROUPS)})_", comment)
                or re.match(r"rule_(\w+?)(_wildcards_.*)?$", comment))
        jobs.append({"id": job_id, "state": state, "account": account, "partition": partition, "tres": tres,
                     "rule": rule.group(1) if rule else comment,
                     # the plugin joins the wildcard values with "_"
                     "wildcards": (rule.group(2).removeprefix("_wildcards_")
                                   if rule and rule.lastindex == 2 and rule.group(2) else "")})
    return jobs


def _new_jobs(before: list[dict[str, str]]) -> list[dict[str, str]]:
    seen = {job["id"] for job in before}
    return [job for job in _sacct() if job["id"] not in seen]


def test_profile_gives_every_job_the_exported_account_and_partition(tmp_path: Path) -> None:
    """A dry run, no cluster needed: `--profile slurm` is found from the repository root, and no workflow profile
    replaces its default-resources (which would silently drop the account and partition)."""
    repo = _repo_copy(tmp_path / "repo")
    (repo / "config.yaml").write_text(yaml.safe_dump(_small_config()))
    env = _env(SBATCH_ACCOUNT="acct_x", SBATCH_PARTITION="part_y")
    code, dry = _snakemake(repo, "all", "-n", timeout_s=120, env=env)
    assert code == 0, dry
    resources = re.findall(r"^(?:    )?    resources: (.*)$", dry, re.M)
    # Every job prints its resources (pretrain too: no `message:` hides them), also inside a group job.
    jobs = _jobs(dry)
    assert jobs["pretrain"] == 1 and len(resources) == sum(jobs.values()) > 0, dry
    assert all("slurm_account=acct_x" in line and "slurm_partition=part_y" in line for line in resources), resources


@pytest.mark.slow
def test_profile_runs_the_workflow_through_slurm(slurm_cluster: Path, tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path / "repo")
    (repo / "config.yaml").write_text(yaml.safe_dump(_small_config()))
    mem_mb = _node_memory_mb()
    # One CPU per job: rules ask for 2-4 threads, and two 1-CPU jobs at a time keep both cores of the CI
    # machine busy while each job starts Snakemake twice (sbatch script, then srun step).
    threads = ("--max-threads", "1")

    code, dry = _snakemake(repo, "all", "-n", *threads, timeout_s=120)
    assert code == 0, dry
    planned = _jobs(dry)
    overrides = _cpu_cluster_resources(repo, _resources(dry), mem_mb)

    before = _sacct()
    code, log = _snakemake(repo, "all", *threads, *POLL, *overrides, timeout_s=WORKFLOW_TIMEOUT_S)
    assert code == 0, log[-8000:]

    # Every output of `all` exists and is up to date.
    code, again = _snakemake(repo, "all", "-n", *threads, *overrides, timeout_s=120)
    assert code == 0 and "Nothing to be done" in again, again[-4000:]
    assert (repo / "results" / "report" / "table.md").stat().st_size > 0

    # Every planned job ran once: the training rules (torchrun) and all other non-local rules as SLURM jobs,
    # each COMPLETED under the exported account and partition, without GPUs.
    submitted = _jobs(log)
    assert submitted + _jobs(log, local=True) == planned
    assert {"pretrain", "train_lm"} <= set(submitted), submitted
    ran = _new_jobs(before)
    assert Counter(job["rule"] for job in ran) == _submissions(log), ran
    assert {job["state"] for job in ran} == {"COMPLETED"}, ran
    assert {(job["account"], job["partition"]) for job in ran} == {(ACCOUNT, PARTITION)}, ran
    assert not [job for job in ran if "gpu" in job["tres"]], ran
    # Sharded extraction: each units config's training corpus is extraction.shards separate SLURM jobs.
    shards = 2  # the default of extraction.shards (configs/test.yaml leaves it)
    config = _small_config()
    used_units = {exp["units"] for exp in config["experiments"].values()}
    for units in used_units:
        jobs = [job for job in ran if job["rule"] == "quantize"
                and re.fullmatch(rf"{units}_corpus-demo_\d+_{shards}", job["wildcards"])]
        assert sorted(int(job["wildcards"].split("_")[-2]) for job in jobs) == list(range(shards)), ran
        assert len({job["id"] for job in jobs}) == shards


@pytest.mark.slow
def test_a_failing_job_is_retried_then_reported_by_rule(slurm_cluster: Path, tmp_path: Path) -> None:
    # A config value no schema can reject: a corpus directory that does not exist on the compute node.
    repo = _repo_copy(tmp_path / "repo")
    config = _small_config()
    missing = repo / "no_such_corpus"
    config.setdefault("corpora", {})["broken"] = {"source": "directory", "root": str(missing)}
    (repo / "config.yaml").write_text(yaml.safe_dump(config))
    target = "resources/corpora/broken/manifest.tsv"

    before = _sacct()
    code, log = _snakemake(repo, target, "--max-threads", "1", *POLL, timeout_s=FAIL_TIMEOUT_S)
    assert code != 0, log[-4000:]
    assert "Error in rule manifest" in log, log[-4000:]
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", log), log[-4000:]
    # show-failed-logs: the rule's own log, naming the bad value, is in the output.
    rule_log = re.search(r"Logfile logs/manifest/broken\.log:\n=+\n(.*?)\n=+", log, re.S)
    assert rule_log and str(missing) in rule_log.group(1), log[-4000:]
    assert not (repo / target).exists()
    ran = _new_jobs(before)
    assert [job["rule"] for job in ran] == ["manifest", "manifest"], ran  # `retries: 1` resubmitted it once
    assert {job["state"] for job in ran} == {"FAILED"}, ran


@pytest.mark.slow
def test_unset_account_is_a_clear_error(slurm_cluster: Path, tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path / "repo")
    (repo / "config.yaml").write_text(yaml.safe_dump(_small_config()))
    env = _env()
    del env["SBATCH_ACCOUNT"]
    code, log = _snakemake(repo, "all", *POLL, "--retries", "0", timeout_s=120, env=env)
    assert code != 0
    assert "The given account $SBATCH_ACCOUNT appears to be invalid" in log, log[-4000:]


# ---------------------------------------------------------------------------------------------------------------
# Training jobs that outlive their time limit, and multi-node training (srun + torchrun c10d)


def _training_config(lm_steps: int, spidr_steps: int, micro_batch: int = 8) -> dict:
    """configs/test.yaml with longer training: each run lasts more than one 1-minute job on this machine."""
    config = _small_config()
    config["experiments"] = {"mfcc_kmeans": {"units": "mfcc_kmeans", "lm": "tiny"}}
    config["encoders"]["spidr_tiny"]["train"].update(max_steps=spidr_steps)
    config["lms"]["tiny"]["train"].update(max_steps=lm_steps, eval_interval=lm_steps, micro_batch_size=micro_batch,
                                          checkpoint_interval=lm_steps)
    return config


def _launched(log: Path) -> list[str]:
    """The trainer command line of the last attempt, as common.launch wrote it into the rule's log."""
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("common.launch: ") and " -m " in ln]
    assert lines, log.read_text()[-3000:]
    return shlex.split(lines[-1].removeprefix("common.launch: "))


def _uninterrupted(repo: Path, log: Path, tmp: Path) -> Path:
    """Rerun the rule's trainer on this machine in one go, into a new workdir and output; returns the output."""
    words = _launched(log)
    args = words[words.index("-m") + 1:]
    if "--stop-after-seconds" in args:
        del args[args.index("--stop-after-seconds"):args.index("--stop-after-seconds") + 2]
    args[args.index("--workdir") + 1] = str(tmp / "work")
    out = tmp / Path(args[args.index("--out") + 1]).name
    args[args.index("--out") + 1] = str(out)
    done = subprocess.run([sys.executable, "-m", *args], cwd=repo, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a SpidR checkpoint (.pt) or a unit-LM model directory, by key path."""
    if path.is_dir():
        return load_file(path / "model.safetensors")
    found: dict[str, torch.Tensor] = {}

    def walk(obj: object, key: str) -> None:
        if isinstance(obj, torch.Tensor):
            found[key] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{key}.{k}")
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(v, f"{key}.{i}")

    walk(torch.load(path, map_location="cpu", weights_only=True), "")
    return found


def _sacct_exit_codes(before: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """(rule, state, exit code) of every job run since `before`, in submission order."""
    seen = {job["id"] for job in before}
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-S", "now-1days", "-o", "JobID,State,ExitCode,Comment"],
                         capture_output=True, text=True, check=True)
    jobs = []
    for line in out.stdout.splitlines():
        job_id, state, code, comment = line.split("|", 3)
        rule = re.match(r"rule_(\w+?)(_wildcards_.*)?$", comment)
        if job_id not in seen and rule:
            jobs.append((rule.group(1), state, code))
    return jobs


@pytest.mark.slow
def test_training_jobs_stop_before_the_time_limit_and_resume_to_the_same_weights(slurm_cluster: Path,
                                                                                  tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path / "repo")
    (repo / "config.yaml").write_text(yaml.safe_dump(_training_config(lm_steps=LM_STEPS, spidr_steps=SPIDR_STEPS)))
    targets = ["results/encoders/spidr_tiny/checkpoint.pt", "results/lm/mfcc_kmeans/tiny/model"]
    threads = ("--max-threads", "1")
    code, dry = _snakemake(repo, *targets, "-n", *threads, timeout_s=120)
    assert code == 0, dry
    overrides = _cpu_cluster_resources(repo, _resources(dry), _node_memory_mb())
    # A 1-minute time limit for both training rules (the smallest SLURM has).
    overrides += ["pretrain:runtime=1", "train_lm:runtime=1"]

    before = _sacct()
    code, log = _snakemake(repo, *targets, *threads, *POLL, *overrides, timeout_s=WORKFLOW_TIMEOUT_S)
    assert code == 0, log[-8000:]

    jobs = _sacct_exit_codes(before)
    for rule in ("pretrain", "train_lm"):
        attempts = [(state, exit_code) for name, state, exit_code in jobs if name == rule]
        # Stopped before the limit at least once (FAILED, not TIMEOUT: the trainer exited 75 with a checkpoint; the
        # job's own exit code is the jobstep Snakemake's 1), then resubmitted by Snakemake until it completed.
        assert len(attempts) >= 2 and attempts[-1] == ("COMPLETED", "0:0"), (rule, jobs)
        assert all(state == "FAILED" for state, _ in attempts[:-1]), (rule, jobs)
    pretrain_log = repo / "logs" / "pretrain" / "spidr_tiny.log"
    lm_log = repo / "logs" / "train_lm" / "mfcc_kmeans" / "tiny.log"
    assert "resum" in lm_log.read_text() and "resum" in pretrain_log.read_text()

    for log_path, target in ((pretrain_log, targets[0]), (lm_log, targets[1])):
        reference = _tensors(_uninterrupted(repo, log_path, tmp_path / log_path.stem))
        resumed = _tensors(repo / target)
        assert reference.keys() == resumed.keys() and reference, target
        assert all(torch.equal(reference[k], resumed[k]) for k in reference), target


@pytest.mark.slow
def test_two_node_training_through_srun_and_a_c10d_rendezvous(slurm_cluster: Path, tmp_path: Path) -> None:
    """The local cluster's two nodes (two slurmd on this host): one torchrun each, gloo, world size 2."""
    repo = _repo_copy(tmp_path / "repo")
    (repo / "config.yaml").write_text(yaml.safe_dump(_training_config(lm_steps=10, spidr_steps=6, micro_batch=4)))
    target = "results/lm/mfcc_kmeans/tiny/model"
    code, dry = _snakemake(repo, target, "-n", "--max-threads", "1", timeout_s=120)
    assert code == 0, dry
    overrides = _cpu_cluster_resources(repo, _resources(dry), _node_memory_mb())
    # What slurm/profiles/2x8/config.yaml sets, without GPUs: the plugin runs the rule in the batch step (mpi), and
    # common.launch starts one task per node.
    overrides += ["train_lm:nodes=2", "train_lm:tasks=2", "train_lm:mpi=srun"]

    code, log = _snakemake(repo, target, "--max-threads", "1", *POLL, *overrides, timeout_s=WORKFLOW_TIMEOUT_S)
    assert code == 0, log[-8000:]
    words = _launched(repo / "logs" / "train_lm" / "mfcc_kmeans" / "tiny.log")
    assert words[0] == "srun" and "--nodes=2" in words and "--ntasks-per-node=1" in words, words
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    assert "--rdzv-backend=c10d" in words and any(w.startswith(f"--rdzv-endpoint={host}:") for w in words), words
    provenance = json.loads((repo / target / "provenance.json").read_text())
    assert provenance["training"]["world_size"] == 2, provenance["training"]


# ---------------------------------------------------------------------------------------------------------------
# Preemption: a job put back in the queue by SLURM (PreemptMode=REQUEUE, a node failure, `scontrol requeue`: one LM job
# of tests/test_rehearsal.py) or preempted (PreemptMode=CANCEL, below) must end with the workflow finished, nothing
# hung, the training resumed from work/. (A job cancelled with scancel ends
# "CANCELLED by <uid>", which plugin 2.8.0 does not recognise: it keeps waiting; slurm/README.md says what to do.)


def _running_job(rule: str, log: Path, since: list[dict[str, str]], started: str, timeout_s: float = 600) -> str:
    """The SLURM job id of `rule`'s job once it runs and its trainer has written `started` into the rule's log (its
    progress bar reaches the log only at the end: common.launch relays the workers' stderr line by line)."""
    deadline = time.monotonic() + timeout_s
    seen = {job["id"] for job in since}
    while time.monotonic() < deadline:
        # squeue, not sacct: the accounting database has a job's comment (its rule) only once the job has ended
        queue = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True)
        for line in queue.stdout.splitlines():
            job_id, comment = line.split("|", 1)
            if (job_id not in seen and comment.startswith(f"rule_{rule}_wildcards_") and log.is_file()
                    and started in log.read_text()):
                time.sleep(10)  # some steps into the run
                return job_id
        time.sleep(1)
    pytest.fail(f"no running {rule} job with {started!r} in {log} after {timeout_s} s: {_new_jobs(since)}")


def _job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.mark.slow
def test_a_preempted_training_job_requeues_itself_and_resumes(slurm_cluster: Path, tmp_path: Path) -> None:
    """PreemptMode=CANCEL, as many clusters run it (the local cluster's partition "urgent" preempts "cpu", 30 s of
    grace): the plugin would poll a PREEMPTED job forever, so the launcher requeues its job when SLURM's SIGTERM
    comes with a PreemptTime; the job runs again under its id, resumes, and the workflow finishes."""
    repo = _repo_copy(tmp_path / "repo")
    (repo / "config.yaml").write_text(yaml.safe_dump(_training_config(lm_steps=2 * LM_STEPS, spidr_steps=6)))
    target = "results/lm/mfcc_kmeans/tiny/model"
    threads = ("--max-threads", "1")
    code, dry = _snakemake(repo, target, "-n", *threads, timeout_s=120)
    assert code == 0, dry
    overrides = _cpu_cluster_resources(repo, _resources(dry), _node_memory_mb())
    lm_log = repo / "logs" / "train_lm" / "mfcc_kmeans" / "tiny.log"

    before = _sacct()
    timeout_s = WORKFLOW_TIMEOUT_S + 300
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout_s), str(VENV_BIN / "snakemake"), "--profile",
           "slurm", target, *threads, *POLL, *overrides]
    with (tmp_path / "snakemake.log").open("w") as out:
        run = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            job = _running_job("train_lm", lm_log, before, started="starting at step 0")
            # A job that needs both nodes whole: SLURM preempts the LM's job to start it.
            urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--exclusive",
                                     "--mem=100", "--time=1", "--output=/dev/null", "--wrap", "sleep 5"],
                                    cwd=tmp_path, env=_env(), check=True, capture_output=True,
                                    text=True).stdout.strip()
            deadline = time.monotonic() + 120
            while _job_state(job) != "PENDING" and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.5)
            # requeued: SLURM holds it back ~2 minutes (BeginTime) otherwise
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False, capture_output=True)
            code = run.wait(timeout=timeout_s + 60)
        finally:
            if run.poll() is None:
                run.send_signal(2)
                run.wait(timeout=60)
    log = (tmp_path / "snakemake.log").read_text()
    assert code == 0, log[-8000:]
    # Snakemake deletes a rule's log before each attempt, so the launcher's "requeued it" went with the first one;
    # the SLURM log holds both attempts (--open-mode=append, slurm/config.yaml), and sacct both runs of the job id.
    assert "resumed from work/lm/mfcc_kmeans/tiny/checkpoints/step_" in lm_log.read_text(), lm_log.read_text()[-3000:]
    slurm_log = next((repo / "logs" / "slurm" / "rule_train_lm").rglob(f"{job}.log")).read_text()
    # Each attempt prints two Snakemake headers (its batch script's, its job step's): 4 is both attempts.
    assert slurm_log.count("--target-jobs train_lm:") == 4, slurm_log[-5000:]
    runs = subprocess.run(["sacct", "-n", "-P", "-X", "--duplicates", "-j", job, "-o", "State"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert runs == ["REQUEUED", "COMPLETED"], runs  # not PREEMPTED, which the plugin would have polled forever
    urgent_state = subprocess.run(["sacct", "-n", "-P", "-X", "-j", urgent, "-o", "State"], capture_output=True,
                                  text=True, check=True).stdout.split()
    assert urgent_state == ["COMPLETED"], urgent_state
