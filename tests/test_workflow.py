"""Tests of the Snakemake workflow itself: config validation, the DAG's stages, and what a dry run schedules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's workflow in `workdir`, with the default config or `config`."""
    configfile = REPO / "config.yaml"
    if config is not None:
        configfile = workdir / "test-config.yaml"
        configfile.write_text(yaml.safe_dump(config))
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), *args],
                          capture_output=True, text=True, timeout=300)


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_dry_run_of_the_default_config_schedules_the_data_stage(tmp_path: Path) -> None:
    out = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr
    assert "demo_data" in out.stdout


def test_a_typo_in_the_config_is_an_error_naming_the_key(tmp_path: Path) -> None:
    config = default_config()
    config["demo"]["train_sentence"] = 3
    out = snakemake(tmp_path, "-n", config=config)
    assert out.returncode != 0
    assert "unknown key(s) ['demo.train_sentence']" in out.stdout + out.stderr


def test_a_bad_value_is_an_error_naming_it(tmp_path: Path) -> None:
    config = default_config()
    config["demo"]["voices"] = ["slt", "nosuchvoice"]
    out = snakemake(tmp_path, "-n", config=config)
    assert out.returncode != 0 and "nosuchvoice" in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("units", "spidr_codebook_l6", "layer"), 2, "'units.spidr_codebook_l6': quantizer='codebook' at layer=2"),
        (("units", "mfcc_kmeans", "layer"), 3, "'units.mfcc_kmeans': layer=3"),
        (("lms", "tiny", "train", "lrr"), 1.0, "'lms.tiny.train': unknown key(s) ['lms.tiny.train.lrr']"),
        (("encoders", "spidr_small", "train", "max_step"), 5, "['encoders.spidr_small.train.max_step']"),
        (("experiments", "mfcc_kmeans", "lm"), "nosuchlm", "'experiments.mfcc_kmeans.lm' refers to lm 'nosuchlm'"),
        # The reliability probes: each fails at `snakemake -n`, naming the key.
        (("lms", "tiny", "train", "max_steps"), -1, "'lms.tiny.train.max_steps': -1 is out of range"),
        (("lms", "tiny", "train", "max_steps"), 0, "'lms.tiny.train.max_steps': 0 is out of range"),
        (("lms", "tiny", "train", "max_steps"), "ten", "'lms.tiny.train.max_steps': expected an integer, got 'ten'"),
        (("encoders", "spidr_small", "train", "optim"), {"lr": -1}, "'encoders.spidr_small.train.optim.lr': -1 is"),
        (("encoders", "spidr_small", "train", "mask"), {"prob": 2.0}, "'encoders.spidr_small.train.mask.prob': 2.0"),
        (("encoders", "spidr_small", "train", "mask"), {"prob": -0.5}, "'encoders.spidr_small.train.mask.prob': -0"),
        (("eval", "abx"), {"slicer": "fastabx"}, "unknown key(s) ['eval.abx.slicer']"),
        (("eval", "bad_audio"), "skip", "'eval.bad_audio' has moved to extraction.bad_audio"),
    ],
)
def test_cross_reference_errors_name_the_config_path(tmp_path: Path, path: tuple, value, message: str) -> None:
    config = default_config()
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    out = snakemake(tmp_path, "-n", config=config)
    assert out.returncode != 0 and message in out.stdout + out.stderr, out.stdout[-2000:]


def test_directory_corpus_gets_a_manifest_rule(tmp_path: Path) -> None:
    config = default_config()
    config["corpora"]["libri"] = {"source": "directory", "root": str(tmp_path / "LibriSpeech"), "ext": ["flac"]}
    out = snakemake(tmp_path, "-n", "--quiet", "rules", config=config)
    assert out.returncode == 0, out.stderr
    assert "manifest" in out.stdout


@pytest.mark.parametrize("path", ["Snakefile", "workflow/rules"])
def test_snakefmt_clean(path: str) -> None:
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", str(REPO / path)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr + out.stdout


# --- rerun scoping: a config change reruns exactly the stages it affects -----------------------------------------

# Outputs declared with directory() in the rules: the placeholders must be folders.
DIRECTORY_OUTPUT = re.compile(r"(/model|/lm/.+/data|/submission(-\w+)?|/storycloze/(sSC|tSC))$")


def planned_jobs(workdir: Path, config: dict, *extra: str) -> Counter:
    """Jobs per rule that a dry run would execute (without `all`, which always appears when anything runs)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *extra, config=config)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs: Counter = Counter()
    table = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", out.stdout, re.S)
    if table:
        for line in table.group(1).splitlines():
            rule, count = line.split()
            if rule != "all":
                jobs[rule] = int(count)
    return jobs


@pytest.fixture(scope="module")
def completed_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory where the default DAG is complete, without running it: every declared output is created
    empty, then `snakemake --touch --forceall` records every job's params and code as if it had run."""
    workdir = tmp_path_factory.mktemp("dag")
    summary = snakemake(workdir, "--summary")
    assert summary.returncode == 0, summary.stdout + summary.stderr
    for line in summary.stdout.splitlines()[1:]:
        path = workdir / line.split("\t")[0]
        if DIRECTORY_OUTPUT.search(str(path)):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    touched = snakemake(workdir, "--touch", "--forceall", "--cores", "1")
    assert touched.returncode == 0, touched.stdout + touched.stderr
    assert planned_jobs(workdir, default_config()) == Counter()
    return workdir


def reversed_keys(obj):
    return {k: reversed_keys(obj[k]) for k in reversed(list(obj))} if isinstance(obj, dict) else obj


def test_lm_hyperparameter_reruns_lm_eval_and_report_only(completed_workdir: Path) -> None:
    config = default_config()
    config["lms"]["tiny"]["train"]["seed"] = 123
    jobs = planned_jobs(completed_workdir, config)
    from pipeline.grids import expand_grids

    n_exp = len(expand_grids(config)["experiments"])  # written out and from the demo's grid
    # Scored: the demo's 4 LM tasks of dev and the 2 of its sLM21 test split (eval.benchmarks: [demo, demo_test]).
    lm_jobs = {"train_lm": 1 * n_exp, "score_lm": 6 * n_exp, "eval_slm21": 4 * n_exp, "eval_storycloze": 2 * n_exp,
               "zerospeech_submission": n_exp, "report": 1}
    # The seed also draws the train/valid split, so the corpus is packed again.
    assert jobs == Counter({**lm_jobs, "pack_lm_data": n_exp})
    config = default_config()
    config["lms"]["tiny"]["train"]["lr"] = 0.001  # not a split setting: the packed data is kept
    assert planned_jobs(completed_workdir, config) == Counter(lm_jobs)


def test_unit_layer_reruns_from_extraction_not_pretraining(completed_workdir: Path) -> None:
    config = default_config()
    config["units"]["spidr_codebook_l6"]["layer"] = 5
    jobs = planned_jobs(completed_workdir, config)
    assert {"pretrain", "demo_data", "fit_kmeans", "benchmark_manifest"}.isdisjoint(jobs)
    shards = default_config()["extraction"]["shards"]
    assert shards >= 2  # the demo runs sharded extraction
    # For this units config only: the training corpus in `shards` jobs, and each of the 7 benchmark sets (5 of the
    # demo's dev, 2 of its sLM21 test) in `benchmark_shards` (1) job; one gather each.
    assert default_config()["extraction"]["benchmark_shards"] == 1
    assert jobs["quantize"] == shards + 7 and jobs["gather_units"] == 8
    assert jobs["train_lm"] == 1 and jobs["report"] == 1
    assert jobs["extract_features"] == 1  # layer 5 features for ABX are new


def test_kmeans_k_reruns_the_fit_not_the_encoder(completed_workdir: Path) -> None:
    config = default_config()
    config["units"]["mfcc_kmeans"]["k"] = 128
    jobs = planned_jobs(completed_workdir, config)
    assert jobs["fit_kmeans"] == 1 and "pretrain" not in jobs and "extract_features" not in jobs


def test_reordered_yaml_and_gpu_count_rerun_nothing(completed_workdir: Path) -> None:
    assert planned_jobs(completed_workdir, reversed_keys(default_config())) == Counter()
    # Any GPU rule's GPU count; the training rules keep a world size that reaches the demo recipe's batch (one
    # process, on CPU here), since any other is refused when the workflow is planned (tests/test_slurm_profiles.py).
    gpus = ("--set-resources", "pretrain:gpu=0", "train_lm:gpu=0", "quantize:gpu=2", "score_lm:gpu=3")
    assert planned_jobs(completed_workdir, default_config(), *gpus) == Counter()


def test_pretraining_hyperparameter_reruns_everything_downstream_of_the_encoder(completed_workdir: Path) -> None:
    config = default_config()
    config["encoders"]["spidr_small"]["train"]["seed"] = 7
    jobs = planned_jobs(completed_workdir, config)
    assert jobs["pretrain"] == 1 and "demo_data" not in jobs
    # The MFCC baseline does not depend on the SpidR encoder (codebook L6, k-means L4 and L6 do).
    assert jobs["train_lm"] == 3 and jobs["fit_kmeans"] == 2


def test_paper_recipe_plans_every_stage_once_pointed_at_data(tmp_path: Path, demo_corpus: Path) -> None:
    """configs/paper.yaml is a complete experiment: with its data_root pointed at a tree, the whole DAG is planned."""
    root = tmp_path / "data"
    links = {  # the demo's dev sets stand in for every set (a dry run reads no audio)
        "sLM21/lexical/dev": "sLM21/lexical/dev", "sLM21/lexical/test": "sLM21/lexical/dev",
        "sLM21/syntactic/dev": "sLM21/syntactic/dev", "sLM21/syntactic/test": "sLM21/syntactic/dev",
        "SpokenStoryCloze": "storycloze",
        **{f"abx/{name}": f"dev/{demo}"
           for subset in ("dev-clean", "dev-other")
           for name, demo in ((f"{subset}/manifest.tsv", "manifest.tsv"), (f"triphone-{subset}.item", "triphone.item"),
                              (f"phoneme-{subset}.item", "phoneme.item"),
                              (f"phoneme-{subset}-100hz.jsonl", "phones_100hz.jsonl"))},
    }
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(demo_corpus / target)
    (root / "checkpoints").mkdir()
    (root / "checkpoints/spidr_base.pt").touch()
    (root / "checkpoints/dinosr.ckpt").touch()
    text = (REPO / "configs/paper.yaml").read_text()
    config = {**yaml.safe_load(text), "data_root": str(root)}  # one override moves the whole recipe
    out = snakemake(tmp_path, "-n", "--quiet", "rules", config=config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rule in ("manifest", "pretrain", "fit_kmeans", "quantize", "dedup", "train_lm", "score_lm", "eval_slm21",
                 "eval_storycloze", "eval_abx_units", "eval_abx_features", "eval_unit_quality",
                 "extract_codebook_probs", "eval_abx_codebook_probs", "report"):
        assert re.search(rf"^{rule}\s+\d+", out.stdout, re.M), rule
    assert "demo_data" not in out.stdout
    # Every set in one run: sLM21 dev and test, ABX on dev-clean and dev-other, PNMI on both and pooled.
    jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out.stdout, re.M)}
    from pipeline.grids import expand_grids

    expanded = expand_grids(config)  # the published sweeps are grids; units-only experiments have no LM tasks
    n_exp = sum(1 for e in expanded["experiments"].values() if e.get("lm") is not None)
    n_units = len(expanded["units"])
    assert jobs["eval_slm21"] == 2 * 2 * n_exp and jobs["eval_storycloze"] == 2 * n_exp
    assert jobs["eval_unit_quality"] == 3 * n_units and jobs["eval_abx_units"] == 2 * 2 * n_units


def test_abx_protocol_reruns_abx_and_report_only(completed_workdir: Path) -> None:
    config = default_config()
    config["eval"]["abx"] = {"max_x_across": 3}
    jobs = planned_jobs(completed_workdir, config)
    assert set(jobs) == {"eval_abx_units", "eval_abx_features", "report"}


def test_bad_audio_policy_reruns_extraction_not_pretraining(completed_workdir: Path) -> None:
    config = default_config()
    config["extraction"] = {"bad_audio": "skip"}
    jobs = planned_jobs(completed_workdir, config)
    assert "pretrain" not in jobs and "demo_data" not in jobs and "train_lm" in jobs
    # Every k-means fit (MFCC, SpidR L4 and L6 from the grid) and every feature extraction (MFCC L0, SpidR L4, L6).
    assert jobs["fit_kmeans"] == 3 and jobs["extract_features"] == 3


def test_shard_count_change_after_a_run_reruns_nothing_without_the_input_trigger(completed_workdir: Path,
                                                                              tmp_path: Path) -> None:
    """After a real run the (temp) shard files are gone. A new extraction.shards then only changes the set of
    input files of gather_units: Snakemake's `input` rerun trigger regathers (and so reruns everything after it,
    although the units are identical); without that trigger nothing reruns."""
    workdir = tmp_path / "dag"
    shutil.copytree(completed_workdir, workdir, symlinks=True)
    for shard in workdir.glob("results/units/*/*/shards/*.parquet"):
        shard.unlink()
    assert planned_jobs(workdir, default_config()) == Counter()
    config = default_config()
    config["extraction"]["shards"] = 3
    jobs = planned_jobs(workdir, config)
    # Only the training corpora are sharded by `shards`: one per units config, now in 3 jobs.
    from pipeline.grids import expand_grids

    n_units = len(expand_grids(config)["units"])
    assert jobs["quantize"] == 3 * n_units and jobs["gather_units"] == n_units and "pretrain" not in jobs
    triggers = ("--rerun-triggers", "mtime", "params", "code", "software-env")
    assert planned_jobs(workdir, config, *triggers) == Counter()
