"""The paper recipe rehearsed: `data_root`, the miniature data tree (pipeline.rehearsal), configs/rehearsal.yaml, the
plan of configs/paper.yaml on that tree (`make rehearsal-plan`), and (slow) the rehearsal itself on the local
two-node SLURM cluster through the paper's profiles, with reruns after hyperparameter changes, a job at its time
limit and a requeued job.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from pipeline import grids
from pipeline.data_root import BENCHMARK_KEYS, CORPUS_KEYS, ENCODER_KEYS, resolve
from tests.conftest import require_flite
from tests.slurm_cluster import SYSTEM_PATH

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PAPER = REPO / "configs" / "paper.yaml"
REHEARSAL = REPO / "configs" / "rehearsal.yaml"
PROFILE_2X8 = REPO / "slurm" / "profiles" / "2x8" / "config.yaml"


def paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


def rehearsal() -> dict:
    """paper.yaml with configs/rehearsal.yaml on top, merged as Snakemake merges two --configfile."""
    config = paper()
    update_config(config, yaml.safe_load(REHEARSAL.read_text()))
    return config


# ---------------------------------------------------------------------------------------------------------------
# data_root


def test_data_root_resolves_relative_data_paths_and_leaves_the_rest() -> None:
    config = {
        "data_root": "/mnt/d",
        "corpora": {"a": {"source": "directory", "root": "LibriSpeech/train-960"},
                    "b": {"source": "manifest", "manifest": "/abs/m.tsv"}, "c": {"source": "demo"}},
        "benchmarks": {"dev": {"source": "paths", "lexical": "sLM21/lexical/dev", "phones": "abx/p.jsonl"},
                       "pooled": {"source": "pooled", "of": ["dev", "x"]}},
        "encoders": {"r": {"kind": "spidr", "checkpoint": "checkpoints/spidr_base.pt"},
                     "h": {"kind": "hf", "model": "facebook/hubert-base-ls960"},
                     "t": {"kind": "spidr", "corpus": "a", "train": {"preset": "tiny"}}},
    }
    before = copy.deepcopy(config)
    out = resolve(config)
    assert config == before  # a copy: the caller decides to apply it
    assert out["corpora"]["a"]["root"] == "/mnt/d/LibriSpeech/train-960"
    assert out["corpora"]["b"]["manifest"] == "/abs/m.tsv"  # absolute: as it is
    assert out["benchmarks"]["dev"] == {"source": "paths", "lexical": "/mnt/d/sLM21/lexical/dev",
                                        "phones": "/mnt/d/abx/p.jsonl"}
    assert out["benchmarks"]["pooled"]["of"] == ["dev", "x"]  # names, not paths
    assert out["encoders"]["r"]["checkpoint"] == "/mnt/d/checkpoints/spidr_base.pt"
    assert out["encoders"]["h"]["model"] == "facebook/hubert-base-ls960"  # a hub name, never a path
    assert resolve({k: v for k, v in config.items() if k != "data_root"}) == {}  # no data_root: nothing changes


def test_data_root_of_another_type_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"'data_root' must be a directory path .* got 5"):
        resolve({"data_root": 5, "corpora": {}})


def paper_data_paths(config: dict) -> list[str]:
    """Every data path paper.yaml names (relative to its data_root)."""
    keys = {"corpora": CORPUS_KEYS, "benchmarks": BENCHMARK_KEYS, "encoders": ENCODER_KEYS}
    return [entry[key] for section, names in keys.items() for entry in config[section].values() for key in names
            if isinstance(entry.get(key), str)]


def test_paper_recipe_data_paths_all_hang_off_its_data_root() -> None:
    config = paper()
    assert config["data_root"] == "/data"
    paths = paper_data_paths(config)
    assert paths and not [p for p in paths if os.path.isabs(p)], paths


# ---------------------------------------------------------------------------------------------------------------
# configs/rehearsal.yaml: sizes only

# The keys the rehearsal may change, as key paths with `*` for an entry name: sizes, never what is computed.
SIZE_KEYS = {
    "corpora.*.hours",
    "encoders.*.train.preset", "encoders.*.train.compile", "encoders.*.train.max_steps",
    "encoders.*.train.model.num_layers", "encoders.*.train.model.num_codebooks",
    "encoders.*.train.data.global_batch_samples", "encoders.*.train.data.batch_samples",
    "lms.*.train.preset", "lms.*.train.context_length", "lms.*.train.batch_size", "lms.*.train.micro_batch_size",
    "lms.*.train.warmup_steps", "lms.*.train.max_steps", "lms.*.train.eval_interval", "lms.*.train.eval_blocks",
    "grids.*.layer", "grids.*.k", "grids.*.units",
}


def leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path, value


def test_rehearsal_changes_sizes_only_and_keeps_every_entry_and_grid() -> None:
    base, small = paper(), rehearsal()
    override = yaml.safe_load(REHEARSAL.read_text())
    for path, value in leaves(override):
        parts = path.split(".")
        pattern = ".".join([parts[0], "*", *parts[2:]]) if len(parts) > 2 else path
        assert pattern in SIZE_KEYS, f"configs/rehearsal.yaml changes {path}, which is not a size"
        if parts[0] == "grids":  # a sweep is trimmed, never extended or replaced
            assert isinstance(value, list) and len(value) >= 2, path
            assert set(value) <= set(base["grids"][parts[1]][parts[2]]), path
    for section in ("corpora", "benchmarks", "encoders", "units", "lms", "experiments", "grids"):
        assert list(small.get(section) or {}) == list(base.get(section) or {}), section
    assert small["eval"] == base["eval"] and small["data_root"] == base["data_root"]
    expanded_small, expanded_base = grids.expand_grids(small), grids.expand_grids(base)
    for grid in base["grids"]:  # every grid still expands into entries named as in paper.yaml
        names = [e for e in expanded_small["experiments"] if e.startswith(grid)]
        names += [u for u in expanded_small["units"] if u.startswith(grid)]
        assert names, grid
    assert set(expanded_small["experiments"]) <= set(expanded_base["experiments"])
    assert set(expanded_small["lms"]) == set(expanded_base["lms"])  # every LM (each data-scaling corpus)
    assert {e["kind"] for e in small["encoders"].values()} == {e["kind"] for e in base["encoders"].values()}


def test_rehearsal_keeps_the_paper_batch_ratios() -> None:
    """The layouts the paper's profile refuses, the rehearsal refuses too (same micro-batches per global batch)."""
    base, small = paper(), rehearsal()
    for name, enc in base["encoders"].items():
        if "train" in enc:
            big, tiny = enc["train"]["data"], small["encoders"][name]["train"]["data"]
            assert (big["global_batch_samples"] / big["batch_samples"]
                    == tiny["global_batch_samples"] / tiny["batch_samples"]), name
    for name, lm in base["lms"].items():
        big, tiny = lm["train"], small["lms"][name]["train"]
        assert big["batch_size"] / big["micro_batch_size"] == tiny["batch_size"] / tiny["micro_batch_size"], name


# ---------------------------------------------------------------------------------------------------------------
# The miniature data tree and `make rehearsal-plan`


@pytest.fixture(scope="module")
def rehearsal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make rehearsal-plan REHEARSAL=<dir>`: the data tree generated under <dir>/data, the plan's output in
    <dir>/plan.txt (and its exit code in <dir>/plan.rc)."""
    require_flite()
    out = tmp_path_factory.mktemp("rehearsal")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "SLURM_"))}
    done = subprocess.run(["make", "--no-print-directory", "rehearsal-plan", f"REHEARSAL={out}"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    (out / "plan.txt").write_text(done.stdout)
    (out / "plan.rc").write_text(str(done.returncode))
    return out


@pytest.mark.slow  # generates a corpus or a data tree: more than a few seconds
def test_generated_tree_holds_every_path_of_the_paper_recipe(rehearsal_dir: Path) -> None:
    data = rehearsal_dir / "data"
    info = json.loads((data / "info.json").read_text())
    for path in paper_data_paths(paper()):
        assert (data / path).exists(), f"configs/paper.yaml names {path}, missing from the miniature tree"
    # LibriSpeech's layout: speaker/chapter/speaker-chapter-NNNN.flac, a transcript per chapter.
    for subset in ("train-960", "dev-clean", "dev-other"):
        flacs = sorted((data / "LibriSpeech" / subset).glob("*/*/*.flac"))
        assert flacs and all(re.fullmatch(rf"{f.parent.parent.name}-{f.parent.name}-\d{{4}}", f.stem) for f in flacs)
        assert all((f.parent / f"{f.parent.parent.name}-{f.parent.name}.trans.txt").is_file() for f in flacs)
    # ABX: the manifest built with the README's command names each item file's utterances, by stem.
    for subset in ("dev-clean", "dev-other"):
        manifest = (data / f"abx/{subset}/manifest.tsv").read_text().splitlines()
        ids = {line.split("\t")[0] for line in manifest[1:]}
        items = (data / f"abx/triphone-{subset}.item").read_text().splitlines()
        assert items[0].startswith("#file onset offset #phone") and len(items) > 100
        assert {line.split()[0] for line in items[1:]} <= ids
        phones = [json.loads(line) for line in (data / f"abx/phoneme-{subset}-100hz.jsonl").read_text().splitlines()]
        assert {p["id"] for p in phones} == ids
    for split in ("dev", "test"):
        assert (data / f"sLM21/lexical/{split}/gold.csv").is_file()
        assert (data / f"sLM21/syntactic/{split}/gold.csv").is_file()
    assert sorted(info["hf_models"]) == sorted(e["model"] for e in paper()["encoders"].values() if e["kind"] == "hf")


@pytest.mark.slow  # generates a corpus or a data tree: more than a few seconds
def test_dinosr_release_layout_loads_as_fairseq_and_hf_models_load_offline(rehearsal_dir: Path) -> None:
    data = rehearsal_dir / "data"
    code = ("import torch, sys; from spidr.checkpoint import is_fairseq_dinosr, load_model\n"
            "obj = torch.load(sys.argv[1], weights_only=True); assert is_fairseq_dinosr(obj)\n"
            "m = load_model(sys.argv[1]); assert m.kind == 'dinosr' and m.cfg.num_layers == 12\n"
            "from units.encoders.hf import HFEncoder\n"
            "for name in sys.argv[2:]: assert HFEncoder(name).num_layers == 12\n")
    hf = [e["model"] for e in paper()["encoders"].values() if e["kind"] == "hf"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(data / "huggingface/hub")}
    done = subprocess.run([sys.executable, "-c", code, str(data / "checkpoints/dinosr.ckpt"), *hf], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def planned_resources(plan: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job of a dry run."""
    jobs, rule = [], None
    for line in plan.splitlines():
        head = re.match(r"\s*(?:local)?rule (\w+):$", line)
        if head:
            rule = head.group(1)
        elif rule and line.strip().startswith("resources: "):
            pairs = (item.split("=", 1) for item in line.strip().removeprefix("resources: ").split(", "))
            jobs.append((rule, dict(pairs)))
            rule = None
    return jobs


@pytest.mark.slow  # generates a corpus or a data tree: more than a few seconds
def test_rehearsal_plan_of_the_paper_recipe_on_2x8_is_clean(rehearsal_dir: Path) -> None:
    """`make rehearsal-plan`: configs/paper.yaml with the 2x8 profile plans on the miniature tree, prints the layout
    of every distributed job, announces nothing to fail, and every job asks for what a 2 x 8-GPU cluster has."""
    plan = (rehearsal_dir / "plan.txt").read_text()
    assert (rehearsal_dir / "plan.rc").read_text() == "0", plan[-5000:]
    assert "WILL FAIL" not in plan and "Error" not in plan, plan[-5000:]
    config = grids.expand_grids(paper())
    layouts = re.findall(r"^\s+(pretrain|train_lm) (\w+) \(([^)]*)\): (\d+) process\(es\) x (\d+) accumulation", plan,
                         re.M)
    trained = {(rule, name) for rule, name, *_ in layouts}
    assert trained == ({("pretrain", e) for e, enc in config["encoders"].items() if "train" in enc}
                       | {("train_lm", lm) for lm in config["lms"]}), plan[:5000]
    profile = yaml.safe_load(PROFILE_2X8.read_text())["set-resources"]
    jobs = planned_resources(plan)
    assert len(jobs) > 100
    for rule, res in jobs:
        nodes = int(res.get("nodes", 1))
        gres = re.fullmatch(r"gpu(?::\w+)?:(\d+)", res.get("gres", "") or "")
        per_node = int(gres.group(1)) if gres else int(res.get("gpu", 0))
        assert nodes <= 2 and per_node <= 8, (rule, res)
        if nodes > 1:  # one launcher per node in the batch step, GPUs per node through gres
            assert gres and res.get("gpu") == "0" and res.get("tasks") == str(nodes) and res.get("mpi"), (rule, res)
        assert int(res["runtime"]) > 0 and int(res["mem_mb"]) > 0, (rule, res)
        assert rule in profile or rule == "all", f"rule {rule} has no resources in slurm/profiles/2x8"
    for rule, name, where, world, _ in layouts:  # the world sizes are the profile's
        res = profile[rule]
        expected = int(res.get("nodes", 1)) * (int(str(res["gres"]).rsplit(":", 1)[1]) if res.get("gres")
                                               else max(int(res.get("gpu", 0)), 1))
        assert int(world) == expected, (rule, name, where, world)


# ---------------------------------------------------------------------------------------------------------------
# The rehearsal on the local two-node SLURM cluster (slow)

ACCOUNT, PARTITION = "ci", "cpu"
LOCAL_GPUS = 8  # stand-in GPUs per node of the local cluster (tests/slurm_cluster.py)
# Guards against a hung status query (the plugin can wait forever): far above the expected durations.
RUN_TIMEOUT_S = 2400
POLL = ("--slurm-init-seconds-before-status-checks", "2")


def local_profile(repo: Path, node_mem_mb: int) -> Path:
    """slurm/profiles/2x8 as this cluster can hold it: memory at most 1/16 of a node (GPU counts capped at its
    stand-in GPUs, 8 per node: none is); the rest (nodes, gres, tasks, mpi, runtimes, expressions) as written."""
    profile = yaml.safe_load(PROFILE_2X8.read_text())
    for resources in profile["set-resources"].values():
        if isinstance(resources.get("mem_mb"), int):
            resources["mem_mb"] = min(resources["mem_mb"], node_mem_mb // 16)
        if resources.get("gres"):
            resources["gres"] = re.sub(r"\d+$", lambda m: str(min(int(m[0]), LOCAL_GPUS)), str(resources["gres"]))
        if isinstance(resources.get("gpu"), int):
            resources["gpu"] = min(resources["gpu"], LOCAL_GPUS)
    out = repo / "slurm" / "profiles" / "local" / "config.yaml"
    out.parent.mkdir(parents=True)
    out.write_text(yaml.safe_dump(profile, sort_keys=False))
    return out.parent


def env(data: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    return {**base, "PATH": os.pathsep.join([str(VENV_BIN), SYSTEM_PATH]), "SBATCH_ACCOUNT": ACCOUNT,
            "SBATCH_PARTITION": PARTITION, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(data / "huggingface" / "hub")}


class Rehearsal:
    """`snakemake --profile slurm --workflow-profile <local 2x8> --configfile paper.yaml rehearsal.yaml [extra]`."""

    def __init__(self, repo: Path, data: Path, profile: Path, run_timeout_s: int) -> None:
        self.repo, self.data, self.profile, self.run_timeout_s = repo, data, profile, run_timeout_s
        self.extra: list[Path] = []

    def change(self, name: str, values: dict) -> None:
        path = self.repo / f"change-{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        self.extra.append(path)

    def args(self, *more: str) -> list[str]:
        return ["--profile", "slurm", "--workflow-profile", str(self.profile), "--configfile",
                str(PAPER), str(REHEARSAL), *map(str, self.extra), "--replace-workflow-config", "--config",
                f"data_root={self.data}", "--max-threads", "1", *more]

    def run(self, *more: str, timeout_s: int | None = None) -> tuple[int, str]:
        timeout_s = timeout_s or self.run_timeout_s
        cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout_s), str(VENV_BIN / "snakemake"), *self.args(*more)]
        out = subprocess.run(cmd, cwd=self.repo, env=env(self.data), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=timeout_s + 60)
        return out.returncode, out.stdout

    def start(self, *more: str) -> subprocess.Popen:
        cmd = ["timeout", "-s", "INT", "-k", "30", str(self.run_timeout_s), str(VENV_BIN / "snakemake"),
               *self.args(*more)]
        return subprocess.Popen(cmd, cwd=self.repo, env=env(self.data), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def planned(self, *targets: str) -> Counter:
        code, out = self.run(*targets, "-n", "--quiet", "rules", timeout_s=300)  # --quiet takes a list: last
        assert code == 0, out[-4000:]
        return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)
                        if m[1] not in ("total", "all")})


def sacct_jobs() -> list[dict[str, str]]:
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-S", "now-1days", "-o",
                          "JobID,State,ExitCode,AllocTRES,Comment"], capture_output=True, text=True, check=True)
    jobs = []
    for line in out.stdout.splitlines():
        job_id, state, code, tres, comment = line.split("|", 4)
        jobs.append({"id": job_id, "state": state, "code": code, "tres": tres, "comment": comment})
    return jobs


def repo_copy(dest: Path) -> Path:
    from tests.test_slurm import _repo_copy

    return _repo_copy(dest)


@pytest.fixture(scope="module")
def rehearsal_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_flite()
    out = tmp_path_factory.mktemp("rehearsal-data")
    done = subprocess.run([sys.executable, "-m", "pipeline.rehearsal", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def world_of(provenance: Path) -> int:
    return int(json.loads(provenance.read_text())["training"]["world_size"])


# The trained part of the rehearsal DAG: both pretrainings (2 nodes x 8 stand-in GPUs, the paper's world size 16) and
# unit LMs on the 6k h corpus and on a data-scaling subset, with everything they need (manifests, subsets, k-means,
# units, dedup, packing): 19 jobs. The whole DAG (1,068 jobs) is `make rehearsal`.
TRAINED = ("results/encoders/spidr_base/checkpoint.pt", "results/encoders/dinosr_base/checkpoint.pt",
           "results/lm/spidr_codebook_l6/opt125m/model", "results/lm/hubert_kmeans_l11/opt125m_librilight600/model")
# What an LM hyperparameter may rerun: the LMs and what reads them.
LM_DOWNSTREAM = {"train_lm", "score_lm", "eval_slm21", "eval_storycloze", "zerospeech_submission", "report",
                 "published"}


def planned_wildcards(run: Rehearsal, *targets: str) -> list[dict[str, str]]:
    """rule and wildcards of every job a dry run plans."""
    code, out = run.run("-n", *targets, timeout_s=300)
    assert code == 0, out[-4000:]
    jobs = []
    for block in re.split(r"\n(?=\S*rule \w+:)", out):
        head = re.match(r"\S*rule (\w+):", block)
        wild = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        if head:
            jobs.append({"rule": head.group(1), **(dict(w.split("=", 1) for w in wild.group(1).split(", "))
                                                   if wild else {})})
    return jobs


def record(stats: dict[str, float], **figures: float) -> None:
    """Add `figures` to `stats` and print them at once: a failure in a later phase keeps the earlier ones."""
    stats.update(figures)
    print(f"rehearsal: {figures}", flush=True)


def rehearse(slurm_cluster: Path, data: Path, tmp_path: Path, targets: tuple[str, ...], *, time_limit: bool,
             run_timeout_s: int = RUN_TIMEOUT_S) -> dict[str, float]:
    """The rehearsal on the local cluster: a first run of `targets`, then reruns after an LM hyperparameter change
    (with one LM job requeued while it runs), a change of k, and a pretraining hyperparameter change (with
    `time_limit`, under a job time limit the trainer must stop before). Returns wall times and counts."""
    repo = repo_copy(tmp_path / "repo")
    node_mem = int(subprocess.run(["sinfo", "-h", "-N", "-o", "%m"], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
    run = Rehearsal(repo, data, local_profile(repo, node_mem), run_timeout_s)
    stats: dict[str, float] = {}

    # 1. Every job through sbatch with the profile's resources.
    planned = run.planned(*targets)
    before = sacct_jobs()
    t0 = time.monotonic()
    code, log = run.run(*POLL, *targets)
    record(stats, first_run_s=time.monotonic() - t0, jobs=sum(planned.values()))
    assert code == 0, log[-10000:]
    assert run.planned(*targets) == Counter(), "the first run left jobs to do"
    jobs = [j for j in sacct_jobs() if j["id"] not in {b["id"] for b in before}]
    record(stats, sbatch_jobs=len(jobs))
    assert jobs and {j["state"] for j in jobs} == {"COMPLETED"}, Counter(j["state"] for j in jobs)
    # The trainers ran at the profile's world sizes (pretraining: 2 nodes x 8, as the paper) and reached the
    # recipe's global batch exactly; the pretraining jobs held 16 GPUs on 2 nodes.
    for encoder in ("spidr_base", "dinosr_base"):
        text = (repo / "logs" / "pretrain" / f"{encoder}.log").read_text()
        assert "global batch: 16 process(es) x 1 accumulation x 8000 samples = 128000 samples" in text, encoder
        assert re.search(r"srun .*--nodes=2 .*torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d", text)
    assert all("gres/gpu=16" in j["tres"] and "node=2" in j["tres"] for j in jobs
               if j["comment"].startswith("rule_pretrain")), jobs
    lm_res = yaml.safe_load((run.profile / "config.yaml").read_text())["set-resources"]["train_lm"]
    lm_world = int(lm_res.get("nodes", 1)) * (int(str(lm_res["gres"]).rsplit(":", 1)[1]) if lm_res.get("gres")
                                               else max(int(lm_res.get("gpu", 0)), 1))
    models = sorted(repo.glob("results/lm/*/*/model/provenance.json"))
    assert len(models) == planned["train_lm"] > 0
    for prov in models:
        training = json.loads(prov.read_text())["training"]
        assert training["world_size"] == lm_world, prov
        assert training["gradient_accumulation"] * 2 * lm_world == 16, prov  # micro-batch 2, global batch 16

    # 2. An LM hyperparameter: the LMs retrain and what reads them reruns; no units, no packing. One LM job is
    # requeued while it runs (as PreemptMode=REQUEUE does), and the run still finishes.
    run.change("lm_lr", {"lms": {"opt125m": {"train": {"lr": 1.0e-3}}}})
    planned = run.planned(*targets)
    assert planned["train_lm"] == len(models) and set(planned) <= LM_DOWNSTREAM, planned
    t0 = time.monotonic()
    proc = run.start(*POLL, *targets)
    requeued = requeue_first_running("rule_train_lm", proc)
    log, _ = proc.communicate(timeout=run.run_timeout_s + 60)
    record(stats, lm_rerun_s=time.monotonic() - t0)
    assert proc.returncode == 0 and requeued, log[-10000:]
    states = subprocess.run(["sacct", "-D", "-n", "-X", "-j", requeued, "-o", "State"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    assert run.planned(*targets) == Counter()

    # 3. A change of k (HuBERT k-means): that grid's fit, units and LMs, nothing of any other entry.
    run.change("k", {"grids": {"hubert_kmeans": {"k": 128}}})
    planned_jobs = planned_wildcards(run, *targets)
    assert any(j["rule"] == "fit_kmeans" for j in planned_jobs), planned_jobs
    assert all(j.get("units", "hubert_kmeans").startswith("hubert_kmeans") and j["rule"] != "pretrain"
               for j in planned_jobs), planned_jobs
    t0 = time.monotonic()
    code, log = run.run(*POLL, *targets)
    record(stats, k_rerun_s=time.monotonic() - t0)
    assert code == 0, log[-10000:]
    assert run.planned(*targets) == Counter()

    # 4. A pretraining hyperparameter (DinoSR reproduced with another learning rate): the trainer sets the old work
    # directory aside and trains afresh, and what reads the encoder follows. With `time_limit`, also more steps than
    # a 4-minute job holds: the trainer stops before the limit with a checkpoint, is resubmitted and resumes.
    train: dict = {"optim": {"lr": 1.0e-3}, **({"max_steps": 120} if time_limit else {})}
    run.change("pretrain", {"encoders": {"dinosr_base": {"train": train}}})
    planned = run.planned(*targets)
    assert planned["pretrain"] == 1, planned
    before = sacct_jobs()
    t0 = time.monotonic()
    limit = ("--set-resources", *local_resources(run.profile, pretrain="runtime=4")) if time_limit else ()
    code, log = run.run(*POLL, *targets, *limit)  # --set-resources takes a list: last
    record(stats, pretrain_rerun_s=time.monotonic() - t0)
    assert code == 0, log[-10000:]
    attempts = [j for j in sacct_jobs() if j["id"] not in {b["id"] for b in before}
                and j["comment"].startswith("rule_pretrain")]
    assert len(attempts) >= (2 if time_limit else 1) and attempts[-1]["state"] == "COMPLETED", attempts
    # The first attempt set the old work directory aside (Snakemake deletes a rule's log before each attempt, so a
    # later attempt's log shows the resume only).
    assert len(list((repo / "work" / "pretrain").glob("dinosr_base.set-aside-*"))) == 1
    if time_limit:
        assert "resumed from" in (repo / "logs" / "pretrain" / "dinosr_base.log").read_text()
    assert run.planned(*targets) == Counter()
    return stats


@pytest.mark.slow
def test_rehearsal_trains_at_the_paper_world_sizes_and_reruns_on_the_local_cluster(
        slurm_cluster: Path, rehearsal_data: Path, tmp_path: Path) -> None:
    stats = rehearse(slurm_cluster, rehearsal_data, tmp_path, TRAINED, time_limit=False)
    print(f"rehearsal (trained part): {stats}")


# The whole rehearsal DAG is 1,068 jobs (configs/paper.yaml's grids trimmed to two values each): on 2 cores, 59 min
# for the first run and about 1 h 45 min with the reruns, beyond `make test`'s budget, so it runs with `make
# rehearsal` (TEXTLESS_REHEARSAL=1). Its own limits: 3 h per Snakemake run, 6 h in all (pytest-timeout's default of
# 30 min stopped its first attempt).
@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
@pytest.mark.skipif(os.environ.get("TEXTLESS_REHEARSAL") != "1",
                    reason="the rehearsal of the whole paper DAG takes ~1 h 45 min on 2 cores: `make rehearsal`")
def test_rehearsal_of_the_whole_paper_dag_on_the_local_cluster(slurm_cluster: Path, rehearsal_data: Path,
                                                              tmp_path: Path) -> None:
    stats = rehearse(slurm_cluster, rehearsal_data, tmp_path, ("all",), time_limit=True, run_timeout_s=3 * 3600)
    print(f"rehearsal (whole DAG): {stats}")


def requeue_first_running(comment_prefix: str, proc: subprocess.Popen, timeout_s: float = 900) -> str | None:
    """`scontrol requeue` the first RUNNING job whose comment starts with `comment_prefix` and let it start again at
    once (a requeued job is held back a while otherwise); its job id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            job_id, state, comment = line.split("|", 2)
            if state == "RUNNING" and comment.startswith(comment_prefix):
                subprocess.run(["scontrol", "requeue", job_id], check=True)
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
                return job_id
        time.sleep(0.5)
    return None


def local_resources(profile: Path, **changes: str) -> list[str]:
    """--set-resources for every rule of the local profile (the command line replaces the profile's whole
    set-resources), with `rule="key=value"` changes on top."""
    per_rule = yaml.safe_load((profile / "config.yaml").read_text())["set-resources"]
    args = [f"{rule}:{key}={value}" for rule, values in per_rule.items() for key, value in values.items()]
    return [*args, *(f"{rule}:{change}" for rule, change in changes.items())]
