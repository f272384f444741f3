"""Config validation (pipeline.validate, without torch) and the helpers that turn config entries into paths and the
key-sorted `--config` JSON of each job (built by pipeline.config from the stage dataclasses).
"""

import os
import sys

from snakemake.utils import validate

import pipeline.config as pipeline
from pipeline.checks import check_names
from pipeline.data_root import resolve as resolve_data_root
from common.config import dumps
from data.config import DEMO_BENCHMARKS, ManifestConfig
from eval.config import AbxJob, Experiment, ScoresJob, UnitQualityJob
from lm.config import ScoreConfig

# Rules run `python -m ...`: make that the interpreter running Snakemake (the project's venv), also inside SLURM
# jobs, whatever PATH the user's shell had.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# Every job's log starts with host, SLURM job, GPUs, driver, torch / CUDA and code versions (common.launch.job_start).
os.environ.setdefault("TEXTLESS_JOB_HEADER", "1")

# The schema fixes the structure (sections, named entries, sources) and rejects unknown sections and entry keys;
# the stage dataclasses own every default and range, and pipeline.validate checks them and the cross-references,
# naming the key path. Cheap (no torch), so every parse checks, jobs included.
# Entry names first (they build every output path): one line naming the entry and why, before the schema's report.
check_names(config)
validate(config, schema="../schemas/config.schema.yaml")
# Relative data paths are resolved against `data_root` (pipeline.data_root), once, before anything reads them.
config.update(resolve_data_root(config))
# Grids become ordinary units, LMs and experiments (pipeline.grids), so every rule below sees only those.
config.update(pipeline.grids.expand_grids(config))
pipeline.validate(config)

DEMO = "resources/demo"
CORPORA = list(config["corpora"])
BENCHMARKS = list(config.get("benchmarks") or {})
ENCODERS = list(config["encoders"])
UNITS = list(config["units"])
LMS = list(config["lms"])
EXPERIMENTS = list(config["experiments"])
EVAL = pipeline.eval_config(config)
SHARDING = pipeline.sharding(config)
# Every benchmark evaluated in this run; the first is also where the pretraining's learning curves are measured.
BENCH = EVAL.benchmarks[0]
BENCH_SETS = [*pipeline.LM_TASKS, "abx"]


wildcard_constraints:
    corpus="|".join(CORPORA),
    benchmark="|".join(BENCHMARKS),
    encoder="|".join(ENCODERS),
    units="|".join(UNITS),
    lm="|".join(LMS),
    experiment="|".join(EXPERIMENTS),
    lmtask="|".join(pipeline.LM_TASKS),
    benchset="|".join(BENCH_SETS),
    abxkind="triphone|phoneme",
    layer=r"\d+",
    shard=r"\d+",
    nshards=r"\d+",
    dataset="|".join([f"corpus-{c}" for c in CORPORA] + [f"{b}-{s}" for b in BENCHMARKS for s in BENCH_SETS]),


def demo_config():
    return dumps(pipeline.demo_config(config))


def manifest_config(corpus):
    return dumps(pipeline.manifest_config(config, corpus))


def subset_config(corpus):
    return dumps(pipeline.subset_config(config, corpus))


# --- data -------------------------------------------------------------------------------------------------------


def corpus_manifest(name):
    """Manifest of a training corpus: generated (demo), built from a directory, or given."""
    corpus = config["corpora"][name]
    if corpus["source"] == "demo":
        return f"{DEMO}/train/manifest.tsv"
    if corpus["source"] == "directory":
        return f"resources/corpora/{name}/manifest.tsv"
    if corpus["source"] == "subset":
        return f"resources/subsets/{name}/manifest.tsv"
    return corpus["manifest"]


def benchmark_layout(name):
    """Where each evaluation set of a benchmark lives (official layouts); the demo's are generated."""
    bench = config["benchmarks"][name]
    if bench["source"] == "demo":
        return {key: f"{DEMO}/{path}" for key, path in DEMO_BENCHMARKS[bench.get("set", "dev")].items()}
    return {key: value for key, value in bench.items() if key != "source"}


def benchmark_file(key):
    """Input function: one file of the evaluated benchmark's layout (generated first for the demo)."""

    def get(wildcards):
        return benchmark_layout(wildcards.get("benchmark", BENCH))[key]

    return get


def dataset_manifest(wildcards):
    """Manifest of a dataset to turn into units: `corpus-<name>` or `<benchmark>-<set>`."""
    kind, name = wildcards.dataset.split("-", 1)
    if kind == "corpus":
        return corpus_manifest(name)
    if name == "abx":
        return benchmark_layout(kind)["abx_manifest"]
    return f"resources/benchmarks/{kind}/{name}/manifest.tsv"


# --- encoders and units -----------------------------------------------------------------------------------------


def encoder_inputs(name):
    """Files an encoder needs: the checkpoint when this workflow pretrains it (so it runs first)."""
    enc = config["encoders"][name]
    if enc["kind"] in ("spidr", "dinosr"):
        return [pipeline.encoder_checkpoint(config, name)]
    return []


def units_entry(wildcards):
    return config["units"][wildcards.units]


def units_json(wildcards):
    """The one `--config` of every job of a units config (fit, extraction, its evaluations label it)."""
    return dumps(pipeline.units_config(config, wildcards.units))


def features_json(wildcards):
    return dumps(pipeline.features_config(config, wildcards.encoder, int(wildcards.layer)))


def abx_units_json(wildcards):
    exp = pipeline.units_experiment(config, wildcards.units, wildcards.benchmark)
    return dumps(AbxJob(abx=EVAL.abx, experiment=exp))


def abx_features_json(wildcards):
    units = pipeline.features_config(config, wildcards.encoder, int(wildcards.layer))
    exp = Experiment(units=units, eval_set=wildcards.benchmark)
    return dumps(AbxJob(abx=EVAL.abx, experiment=exp))


def unit_quality_json(wildcards):
    exp = pipeline.units_experiment(config, wildcards.units, wildcards.benchmark)
    return dumps(UnitQualityJob(unit_quality=EVAL.unit_quality, experiment=exp))


def scores_job_json(wildcards):
    """eval.slm21 / eval.storycloze: the normalisation comes from lm.score's sidecar, the labels from here."""
    exp = pipeline.experiment(config, wildcards.experiment, wildcards.benchmark)
    return dumps(ScoresJob(experiment=exp))


def score_config():
    return dumps(ScoreConfig(normalisation=EVAL.normalisation))


# --- rule inputs ----------------------------------------------------------------------------------------------


def quantize_inputs(wildcards):
    unit = units_entry(wildcards)
    inputs = {
        "manifest": dataset_manifest(wildcards),
        "encoder": encoder_inputs(unit["encoder"]),
    }
    if unit["quantizer"] == "kmeans":
        inputs["kmeans"] = f"results/kmeans/{wildcards.units}/kmeans.npz"
    return inputs


def unit_shards(wildcards):
    """The shard files of a dataset's units: extraction.shards jobs (compute layout only, not in any --config)."""
    corpus = wildcards.dataset.startswith("corpus-")
    n = SHARDING.shards if corpus else SHARDING.benchmark_shards
    return [f"results/units/{wildcards.units}/{wildcards.dataset}/shards/{i}-of-{n}.parquet" for i in range(n)]


def lm_train_units(wildcards):
    corpus = config["lms"][wildcards.lm]["corpus"]
    return f"results/units/{wildcards.units}/corpus-{corpus}/dedup.parquet"


def lm_split_json(wildcards):
    """The LM config keys that decide its train/valid split (all that lm.pack reads), resolved with defaults."""
    train = pipeline.lm_train_config(config, wildcards.lm)
    return dumps({"valid_fraction": train.valid_fraction, "seed": train.seed})


def pretrain_json(wildcards):
    """`pretrain`'s `--config`: the encoder's resolved training config, so a changed default reruns it too."""
    return dumps(pipeline.pretrain_config(config, wildcards.encoder))


def lm_train_json(wildcards):
    """`train_lm`'s `--config`: the LM's resolved training config."""
    return dumps(pipeline.lm_train_config(config, wildcards.lm))


def slm21_parts(experiment):
    """The per-task sLM21 parts (eval_slm21's submission-<task> folders) of an experiment over every evaluated
    benchmark that has sWUGGY or sBLIMP (dev and test are two benchmarks)."""
    return [
        f"results/eval/experiments/{experiment}/{bench}/submission-{task}"
        for bench in EVAL.benchmarks
        for task in pipeline.benchmark_tasks(config, bench).get("lm", ())
        if task in ("lexical", "syntactic")
    ]


def submission_parts(wildcards):
    return slm21_parts(wildcards.experiment)


def submission_json(wildcards):
    return dumps(pipeline.submission_job(config, wildcards.experiment))


def experiment_scores(wildcards):
    exp = config["experiments"][wildcards.experiment]
    return f"results/lm/{exp['units']}/{exp['lm']}/scores/{wildcards.benchmark}-{wildcards.lmtask}.tsv"


# --- targets -----------------------------------------------------------------------------------------------------


def lm_experiments():
    return [e for e in EXPERIMENTS if config["experiments"][e].get("lm") is not None]


def experiment_metrics():
    """Every metrics file of the run: per benchmark, its LM tasks per experiment, and ABX / unit quality per units
    config (ABX also on continuous features and codebook probabilities of each evaluated layer).
    """
    used_units = sorted({config["experiments"][e]["units"] for e in EXPERIMENTS})
    layers = sorted({(config["units"][u]["encoder"], config["units"][u]["layer"]) for u in used_units})
    probs_layers = pipeline.codebook_probs_layers(config, used_units)
    files = []
    for bench in EVAL.benchmarks:
        tasks = pipeline.benchmark_tasks(config, bench)
        files += [
            f"results/eval/experiments/{e}/{bench}/{task}.json"
            for e in lm_experiments()
            for task in tasks.get("lm", ())
        ]
        kinds = tasks.get("abx", ())
        for u in used_units:
            files += [f"results/eval/units/{u}/{bench}/abx_{kind}.json" for kind in kinds]
            if "unit_quality" in tasks:
                files.append(f"results/eval/units/{u}/{bench}/unit_quality.json")
        if EVAL.abx_features:
            files += [
                f"results/eval/features/{enc}/L{layer}/{bench}/abx_{kind}.json"
                for enc, layer in layers
                for kind in kinds
            ]
        files += [
            f"results/eval/codebook_probs/{enc}/L{layer}/{bench}/abx_{kind}.json"
            for enc, layer in probs_layers
            for kind in kinds
        ]
    return files


def unit_quality_inputs(wildcards):
    """Frame-level units and phone labels of a benchmark's ABX audio; of each part for a pooled benchmark."""
    parts = pipeline.benchmark_tasks(config, wildcards.benchmark).get("pooled", (wildcards.benchmark,))
    return {
        "units": [f"results/units/{wildcards.units}/{b}-abx/frames.parquet" for b in parts],
        "phones": [benchmark_layout(b)["phones"] for b in parts],
    }


def all_targets():
    targets = [f"{DEMO}/info.json"] if uses_demo() else []
    targets += [corpus_manifest(c) for c in CORPORA]
    targets += experiment_metrics()
    targets += [f"results/eval/experiments/{e}/submission" for e in lm_experiments() if slm21_parts(e)]
    targets.append("results/report/table.md")
    return targets


def uses_demo():
    sources = [c["source"] for c in config["corpora"].values()]
    sources += [b["source"] for b in (config.get("benchmarks") or {}).values()]
    return "demo" in sources
