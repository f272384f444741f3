"""Config validation and the helpers that turn config entries into paths, encoder specs and key-sorted params."""

import json
import os
import sys

from snakemake.utils import validate

# Rules run `python -m ...`: make that the interpreter running Snakemake (the project's venv), also inside SLURM
# jobs, whatever PATH the user's shell had.
os.environ["PATH"] = (
    os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
)

# Fills schema defaults into `config` and rejects unknown keys (additionalProperties: false), naming them.
validate(config, schema="../schemas/config.schema.yaml")

DEMO = "resources/demo"
CORPORA = list(config["corpora"])
BENCHMARKS = list(config["benchmarks"])
ENCODERS = list(config["encoders"])
UNITS = list(config["units"])
LMS = list(config["lms"])
EXPERIMENTS = list(config["experiments"])
BENCH = config["eval"]["benchmark"]
LM_TASKS = ["lexical", "syntactic", "sSC", "tSC"]
BENCH_SETS = [*LM_TASKS, "abx"]


def _check_references():
    """What the schema cannot express: names must be defined, train blocks valid, layers exist for the encoder.

    Runs when the workflow is parsed, so a typo fails before any job starts, with the config path in the message.
    """
    from lm.train import TrainConfig as LMTrainConfig
    from spidr.config import from_dict as spidr_train_config
    from units.config import EncoderConfigError, validate_units_request

    def need(kind, name, where, known):
        if name not in known:
            raise ValueError(
                f"config: {where} refers to {kind} {name!r}, which is not defined ({sorted(known)})"
            )

    def check(where, build):
        try:
            build()
        except (ValueError, TypeError) as err:
            raise ValueError(f"config: {where}: {err}") from None

    need("benchmark", BENCH, "eval.benchmark", BENCHMARKS)
    for name, enc in config["encoders"].items():
        if "train" in enc:
            need("corpus", enc["corpus"], f"encoders.{name}.corpus", CORPORA)
            train = {"kind": enc["kind"], **enc["train"]}
            check(f"encoders.{name}.train", lambda: spidr_train_config(train))
    for name, unit in config["units"].items():
        need("encoder", unit["encoder"], f"units.{name}.encoder", ENCODERS)
        if unit["quantizer"] == "kmeans":
            need("corpus", unit["fit"]["corpus"], f"units.{name}.fit.corpus", CORPORA)
        enc = config["encoders"][unit["encoder"]]
        check(
            f"units.{name}",
            lambda: validate_units_request(
                enc["kind"], unit["layer"], unit["quantizer"], **encoder_geometry(enc)
            ),
        )
    for name, lm in config["lms"].items():
        need("corpus", lm["corpus"], f"lms.{name}.corpus", CORPORA)
        check(f"lms.{name}.train", lambda: LMTrainConfig.from_dict(lm["train"]))
    for name, exp in config["experiments"].items():
        need("units", exp["units"], f"experiments.{name}.units", UNITS)
        if exp.get("lm") is not None:
            need("lm", exp["lm"], f"experiments.{name}.lm", LMS)


def encoder_geometry(enc):
    """Depth and codebook layers of an encoder we pretrain, from its preset + overrides (no checkpoint needed)."""
    if enc["kind"] not in ("spidr", "dinosr") or "train" not in enc:
        return {}
    from spidr.config import from_dict

    model = from_dict({"kind": enc["kind"], **enc["train"]}).model
    return {"num_layers": model.num_layers, "codebook_layers": model.codebook_layers}


# Only where the workflow is planned: jobs re-parse this file (twice per SLURM job), and the checks import torch.
if workflow.is_main_process:
    _check_references()


wildcard_constraints:
    corpus="|".join(CORPORA),
    benchmark="|".join(BENCHMARKS),
    encoder="|".join(ENCODERS),
    units="|".join(UNITS),
    lm="|".join(LMS),
    experiment="|".join(EXPERIMENTS),
    lmtask="|".join(LM_TASKS),
    benchset="|".join(BENCH_SETS),
    abxkind="triphone|phoneme",
    layer=r"\d+",
    dataset="|".join(
        [f"corpus-{c}" for c in CORPORA]
        + [f"{b}-{s}" for b in BENCHMARKS for s in BENCH_SETS]
    ),


def sorted_json(obj):
    """A config subtree as key-sorted JSON: reordering YAML keys must not look like a params change."""
    return json.dumps(obj, sort_keys=True)


def demo_config():
    return sorted_json(config["demo"])


# --- data -------------------------------------------------------------------------------------------------------


def corpus_manifest(name):
    """Manifest of a training corpus: generated (demo), built from a directory, or given."""
    corpus = config["corpora"][name]
    if corpus["source"] == "demo":
        return f"{DEMO}/train/manifest.tsv"
    if corpus["source"] == "directory":
        return f"resources/corpora/{name}/manifest.tsv"
    return corpus["manifest"]


def benchmark_layout(name):
    """Where each evaluation set of a benchmark lives (official layouts); the demo's are generated."""
    bench = config["benchmarks"][name]
    if bench["source"] == "demo":
        return {
            "lexical": f"{DEMO}/sLM21/lexical/dev",
            "syntactic": f"{DEMO}/sLM21/syntactic/dev",
            "sSC": f"{DEMO}/storycloze/sSC",
            "tSC": f"{DEMO}/storycloze/tSC",
            "abx_manifest": f"{DEMO}/dev/manifest.tsv",
            "triphone_item": f"{DEMO}/dev/triphone.item",
            "phoneme_item": f"{DEMO}/dev/phoneme.item",
            "phones": f"{DEMO}/dev/phones_100hz.jsonl",
        }
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


def encoder_checkpoint(name):
    """The checkpoint an encoder reads: pretrained by this workflow, or given (official release file)."""
    enc = config["encoders"][name]
    if "train" in enc:
        return f"results/encoders/{name}/checkpoint.pt"
    return enc.get("checkpoint")


def encoder_spec(name):
    """The encoder spec JSON of units.encoders.EncoderSpec."""
    enc = config["encoders"][name]
    spec = {"kind": enc["kind"]}
    if enc["kind"] in ("spidr", "dinosr"):
        spec["checkpoint"] = encoder_checkpoint(name)
    if enc["kind"] == "hf":
        spec["model"] = enc["model"]
    return sorted_json(spec)


def encoder_inputs(name):
    """Files an encoder needs: the checkpoint when this workflow pretrains it (so it runs first)."""
    enc = config["encoders"][name]
    return [encoder_checkpoint(name)] if enc["kind"] in ("spidr", "dinosr") else []


def units_entry(wildcards):
    return config["units"][wildcards.units]


def units_labels(name):
    """What a units config is, for every metrics file and the report."""
    unit = config["units"][name]
    enc = config["encoders"][unit["encoder"]]
    k = unit.get("k") if unit["quantizer"] == "kmeans" else None
    return {
        "units": name,
        "encoder": unit["encoder"],
        "encoder_kind": enc["kind"],
        "layer": unit["layer"],
        "quantizer": unit["quantizer"],
        "k": k,
    }


def experiment_labels(name):
    exp = config["experiments"][name]
    return {"experiment": name, "lm": exp.get("lm"), **units_labels(exp["units"])}


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


def lm_train_units(wildcards):
    corpus = config["lms"][wildcards.lm]["corpus"]
    return f"results/units/{wildcards.units}/corpus-{corpus}/dedup.parquet"


def experiment_scores(wildcards):
    exp = config["experiments"][wildcards.experiment]
    return f"results/lm/{exp['units']}/{exp['lm']}/scores/{wildcards.benchmark}-{wildcards.lmtask}.tsv"


# --- targets -----------------------------------------------------------------------------------------------------


def lm_experiments():
    return [e for e in EXPERIMENTS if config["experiments"][e].get("lm") is not None]


def experiment_metrics():
    """Every metrics file of every experiment: LM tasks per experiment, unit metrics per units config."""
    files = [
        f"results/eval/experiments/{e}/{BENCH}/{task}.json"
        for e in lm_experiments()
        for task in LM_TASKS
    ]
    used_units = sorted({config["experiments"][e]["units"] for e in EXPERIMENTS})
    for u in used_units:
        files += [
            f"results/eval/units/{u}/{BENCH}/abx_{kind}.json"
            for kind in ("triphone", "phoneme")
        ]
        files.append(f"results/eval/units/{u}/{BENCH}/unit_quality.json")
    if config["eval"]["abx_features"]:
        layers = sorted(
            {
                (config["units"][u]["encoder"], config["units"][u]["layer"])
                for u in used_units
            }
        )
        for enc, layer in layers:
            files += [
                f"results/eval/features/{enc}/L{layer}/{BENCH}/abx_{kind}.json"
                for kind in ("triphone", "phoneme")
            ]
    return files


def all_targets():
    targets = [f"{DEMO}/info.json"] if uses_demo() else []
    targets += [corpus_manifest(c) for c in CORPORA]
    targets += experiment_metrics()
    targets.append("results/report/table.md")
    return targets


def uses_demo():
    sources = [c["source"] for c in config["corpora"].values()]
    sources += [b["source"] for b in config["benchmarks"].values()]
    return "demo" in sources
