"""Config validation and the helpers that turn config entries into paths and key-sorted params."""

import json
import os
import sys

from snakemake.utils import validate

# Rules run `python -m ...`: make that the interpreter running Snakemake (the project's venv), also inside SLURM
# jobs, whatever PATH the user's shell had.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

# Fills schema defaults into `config` and rejects unknown keys (additionalProperties: false), naming them.
validate(config, schema="../schemas/config.schema.yaml")

CORPORA = list(config["corpora"])
BENCHMARKS = list(config["benchmarks"])


wildcard_constraints:
    corpus="|".join(CORPORA) or "NONE",
    benchmark="|".join(BENCHMARKS) or "NONE",


def sorted_json(obj):
    """A config subtree as key-sorted JSON: reordering YAML keys must not look like a params change."""
    return json.dumps(obj, sort_keys=True)


def demo_config():
    return sorted_json(config["demo"])


DEMO = "resources/demo"


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
    return {key: bench[key] for key in bench if key != "source"}


def all_targets():
    targets = [f"{DEMO}/info.json"] if uses_demo() else []
    targets += [corpus_manifest(c) for c in CORPORA]
    return targets


def uses_demo():
    sources = [c["source"] for c in config["corpora"].values()]
    sources += [b["source"] for b in config["benchmarks"].values()]
    return "demo" in sources
