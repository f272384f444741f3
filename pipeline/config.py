"""`validate(config)`: every section of the workflow's config through its stage's dataclass, plus cross-references.

The JSON schema (workflow/schemas/config.schema.yaml) fixes the structure (sections, named entries, sources);
the stage dataclasses own every default and range (common.config.load names the key and what was expected);
this module checks what neither can: names that must be defined, layers the encoder has, codebook heads. It
also builds the one `--config` of every job (a resolved dataclass, `common.config.dumps` in the rules), so the
rules only plumb it through. The functions below take the config with its grids expanded (`grids.expand_grids`,
which the workflow does once, up front). No torch: Snakemake imports this while it parses the workflow, and
`snakemake -n` must stay fast.
"""

from __future__ import annotations

from typing import Any

from common.config import ConfigError, load
from data.config import DEMO_BENCHMARKS, DemoConfig, ManifestConfig, SubsetConfig
from eval.config import EvalConfig, Experiment
from eval.submission import SubmissionJob, SubmissionMeta
from lm.config import TrainConfig as LMTrainConfig
from pipeline import grids
from pipeline.checks import check_data_layouts, check_names
from spidr.config import TrainConfig as SpidrTrainConfig
from units.config import EncoderConfigError, ExtractionConfig, ShardingConfig, UnitsConfig, validate_units_request

# Keys that moved: the old place is an error that says where the key lives now.
MOVED = {("eval", "bad_audio"): "extraction.bad_audio (it controls unit and feature extraction)",
         ("eval", "benchmark"): "eval.benchmarks (a list: every benchmark is evaluated in the same run)"}


def encoder_checkpoint(config: dict[str, Any], name: str) -> str | None:
    """The checkpoint an encoder reads: pretrained by this workflow, or given (official release file)."""
    enc = config["encoders"][name]
    return f"results/encoders/{name}/checkpoint.pt" if "train" in enc else enc.get("checkpoint")


def encoder_spec(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The units.config.EncoderSpec of a named encoder."""
    enc = config["encoders"][name]
    spec = {"kind": enc["kind"]}
    if enc["kind"] in ("spidr", "dinosr"):
        spec["checkpoint"] = encoder_checkpoint(config, name)
    if enc["kind"] == "hf":
        spec["model"] = enc["model"]
    return spec


# In config.yaml's `extraction` block, but compute layout: no job's --config has them.
SHARDING_KEYS = ("shards", "benchmark_shards")


def extraction_values(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (config.get("extraction") or {}).items() if k not in SHARDING_KEYS}


def extraction(config: dict[str, Any]) -> ExtractionConfig:
    return load(ExtractionConfig, extraction_values(config), "extraction")


def sharding(config: dict[str, Any]) -> ShardingConfig:
    """How many extraction jobs each dataset is split into (changing it reruns nothing downstream)."""
    values = {k: v for k, v in (config.get("extraction") or {}).items() if k in SHARDING_KEYS}
    return load(ShardingConfig, values, "extraction")


# In a units entry, but which evaluations run: kept out of every job's --config (turning it on reruns nothing else).
UNITS_EVAL_KEYS = ("abx_codebook_probs",)


def units_config(config: dict[str, Any], name: str) -> UnitsConfig:
    """The `--config` of every job of units entry `name` (k-means fit, extraction, dedup, its evaluations)."""
    entry = {k: v for k, v in config["units"][name].items() if k not in UNITS_EVAL_KEYS}
    entry["encoder"] = encoder_spec(config, entry["encoder"])
    values = {**entry, "name": name, "encoder_name": config["units"][name]["encoder"],
              "extraction": extraction_values(config)}
    return load(UnitsConfig, values, f"units.{name}")


def features_config(config: dict[str, Any], encoder: str, layer: int) -> UnitsConfig:
    """The `--config` of continuous-feature extraction (and its ABX) of one encoder layer."""
    values = {"encoder": encoder_spec(config, encoder), "encoder_name": encoder, "layer": layer,
              "extraction": extraction_values(config)}
    return load(UnitsConfig, values, f"encoders.{encoder}")


def experiment(config: dict[str, Any], name: str, eval_set: str | None = None) -> Experiment:
    """What an experiment's LM-task jobs evaluate, with its labels (seed draws of a grid row: pipeline.grids)."""
    exp = config["experiments"][name]
    draws = grids.draw_labels(config)[0].get(name, {})
    return Experiment(units=units_config(config, exp["units"]), name=name, lm=exp.get("lm"), eval_set=eval_set,
                      **draws)


def codebook_probs_layers(config: dict[str, Any], units: list[str]) -> list[tuple[str, int]]:
    """(encoder, layer) of the given units entries with `abx_codebook_probs: true` (ABX on codebook-head
    probabilities, once per encoder layer)."""
    return sorted({(config["units"][u]["encoder"], config["units"][u]["layer"]) for u in units
                   if config["units"][u].get("abx_codebook_probs")})


def units_experiment(config: dict[str, Any], name: str, eval_set: str | None = None) -> Experiment:
    """What a units entry's own jobs (ABX, PNMI) evaluate, labelled like the experiments that use it."""
    draws = grids.draw_labels(config)[1].get(name, {})
    return Experiment(units=units_config(config, name), eval_set=eval_set, **draws)


LM_TASKS = ("lexical", "syntactic", "sSC", "tSC")
ABX_KINDS = ("triphone", "phoneme")


def benchmark_tasks(config: dict[str, Any], name: str) -> dict[str, tuple[str, ...]]:
    """What a benchmark entry evaluates: {"lm": LM tasks, "abx": item kinds, "unit_quality": (), "pooled": parts}.

    A `paths` entry (or the demo's, data.config.DEMO_BENCHMARKS) has the sets whose files it names (sLM21 dev and
    test are two entries); a `pooled` entry is only the unit quality (PNMI) over the ABX audio of the entries it
    names, together.
    """
    bench = config["benchmarks"][name]
    if bench["source"] == "demo":
        bench = DEMO_BENCHMARKS[bench.get("set", "dev")]
    elif bench["source"] == "pooled":
        return {"unit_quality": (), "pooled": tuple(bench["of"])}
    tasks: dict[str, tuple[str, ...]] = {}
    if any(task in bench for task in LM_TASKS):
        tasks["lm"] = tuple(task for task in LM_TASKS if task in bench)
    if "abx_manifest" in bench:
        if any(f"{kind}_item" in bench for kind in ABX_KINDS):
            tasks["abx"] = tuple(kind for kind in ABX_KINDS if f"{kind}_item" in bench)
        if "phones" in bench:
            tasks["unit_quality"] = ()
    return tasks


def eval_config(config: dict[str, Any]) -> EvalConfig:
    return load(EvalConfig, {k: v for k, v in (config.get("eval") or {}).items() if k != "bad_audio"}, "eval")


def submission_meta(config: dict[str, Any]) -> SubmissionMeta:
    """The optional `submission` section: meta.yaml's authors, institution, paper, code URL (eval.submission)."""
    return load(SubmissionMeta, config.get("submission"), "submission")


def train_set(config: dict[str, Any], name: str) -> str:
    """meta.yaml's train_set of an LM experiment: the corpora its encoder, k-means and LM were trained on."""
    exp = config["experiments"][name]
    units = units_config(config, exp["units"])
    enc = config["encoders"][units.encoder_name]
    if "train" in enc:
        encoder = f"encoder {units.encoder_name} pretrained on corpus {enc['corpus']}"
    else:
        given = enc.get("checkpoint") or enc.get("model")
        encoder = f"encoder {units.encoder_name} ({enc['kind']}{', ' + given if given else ''})"
    kmeans = [f"k-means fit on corpus {units.fit.corpus}"] if units.fit is not None and units.fit.corpus else []
    lm = f"unit LM trained on corpus {config['lms'][exp['lm']]['corpus']}"
    return "; ".join([encoder, *kmeans, lm])


def submission_job(config: dict[str, Any], name: str) -> SubmissionJob:
    """The `--config` of an experiment's merged sLM21 submission (eval.submission)."""
    return SubmissionJob(train_set=train_set(config, name), experiment=experiment(config, name),
                         meta=submission_meta(config))


def demo_config(config: dict[str, Any]) -> DemoConfig:
    return load(DemoConfig, config.get("demo"), "demo")


def manifest_config(config: dict[str, Any], corpus: str) -> ManifestConfig:
    """How a `source: directory` corpus is turned into a manifest."""
    entry = config["corpora"][corpus]
    return load(ManifestConfig, {k: v for k, v in entry.items() if k not in ("source", "root")}, f"corpora.{corpus}")


def subset_config(config: dict[str, Any], corpus: str) -> SubsetConfig:
    """A `source: subset` corpus: a seeded subset of another corpus by hours (data.subset), its parent checked."""
    entry = config["corpora"][corpus]
    subset = load(SubsetConfig, {k: v for k, v in entry.items() if k != "source"}, f"corpora.{corpus}")
    chain = [corpus]
    parent = subset.of
    while True:
        if parent not in config["corpora"]:
            raise ConfigError(f"'corpora.{chain[-1]}.of' refers to corpus {parent!r}, which is not defined "
                              f"({sorted(config['corpora'])})")
        if parent in chain:
            raise ConfigError(f"'corpora.{corpus}.of': subsets form a cycle ({' -> '.join([*chain, parent])})")
        chain.append(parent)
        if config["corpora"][parent]["source"] != "subset":
            return subset
        parent = config["corpora"][parent].get("of")


def pretrain_config(config: dict[str, Any], name: str) -> SpidrTrainConfig:
    """The resolved training config of an encoder this workflow pretrains (`pretrain`'s `--config`): its kind, and
    its `train:` block over the preset's defaults."""
    enc = config["encoders"][name]
    return SpidrTrainConfig.from_dict({"kind": enc["kind"], **enc["train"]}, f"encoders.{name}.train")


def lm_train_config(config: dict[str, Any], name: str) -> LMTrainConfig:
    """The resolved training config of a unit LM (`train_lm`'s `--config`)."""
    return LMTrainConfig.from_dict(config["lms"][name]["train"], f"lms.{name}.train")


def encoder_geometry(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Depth and codebook layers of an encoder this workflow pretrains (from its training config); {} otherwise."""
    if "train" not in config["encoders"][name]:
        return {}
    model = pretrain_config(config, name).model
    return {"num_layers": model.num_layers, "codebook_layers": model.codebook_layers}


def validate(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the key path of the first problem in the workflow's config (after the schema)."""

    def need(kind: str, name: Any, where: str, known: dict) -> None:
        if name not in known:
            raise ConfigError(f"{where!r} refers to {kind} {name!r}, which is not defined ({sorted(known)})")

    for (section, key), new in MOVED.items():
        if key in (config.get(section) or {}):
            raise ConfigError(f"'{section}.{key}' has moved to {new}")
    check_names(config)  # names build paths and wildcards: first, and again once grids are expanded
    config = grids.expand_grids(config)  # grid entries are checked as the ordinary entries they become
    check_names(config)
    if not config["experiments"]:
        raise ConfigError("no experiment: define 'experiments' or 'grids'")
    demo_config(config)
    submission_meta(config)
    extraction(config)
    sharding(config)
    for name, corpus in config["corpora"].items():
        if corpus["source"] == "directory":
            manifest_config(config, name)
        if corpus["source"] == "subset":
            subset_config(config, name)
    evaluation = eval_config(config)
    benchmarks = config.get("benchmarks") or {}
    for i, name in enumerate(evaluation.benchmarks):
        need("benchmark", name, f"eval.benchmarks[{i}]", benchmarks)
    for name, bench in benchmarks.items():
        if bench["source"] == "pooled":
            for j, part in enumerate(bench["of"]):
                need("benchmark", part, f"benchmarks.{name}.of[{j}]", benchmarks)
                if "unit_quality" not in benchmark_tasks(config, part) or benchmarks[part]["source"] == "pooled":
                    raise ConfigError(f"'benchmarks.{name}.of[{j}]': {part!r} has no ABX audio and phone labels "
                                      "(abx_manifest and phones) to pool")
        if not benchmark_tasks(config, name):
            raise ConfigError(f"'benchmarks.{name}' names no evaluation set (lexical, syntactic, sSC, tSC, or "
                              "abx_manifest with triphone_item / phoneme_item / phones)")
    for name, enc in config["encoders"].items():
        if "train" in enc:
            need("corpus", enc["corpus"], f"encoders.{name}.corpus", config["corpora"])
            encoder_geometry(config, name)
    for name, unit in config["units"].items():
        need("encoder", unit["encoder"], f"units.{name}.encoder", config["encoders"])
        units = units_config(config, name)
        if unit.get("abx_codebook_probs") and units.quantizer != "codebook":
            raise ConfigError(f"'units.{name}.abx_codebook_probs' needs quantizer 'codebook' (a SpidR / DinoSR "
                              f"codebook head), got {units.quantizer!r}")
        if units.fit is not None:
            need("corpus", units.fit.corpus, f"units.{name}.fit.corpus", config["corpora"])
        try:
            validate_units_request(units.encoder.kind, units.layer, units.quantizer,
                                   **encoder_geometry(config, unit["encoder"]))
        except EncoderConfigError as err:
            raise ConfigError(f"'units.{name}': {err}") from None
    for name, lm in config["lms"].items():
        need("corpus", lm["corpus"], f"lms.{name}.corpus", config["corpora"])
        lm_train_config(config, name)
    for name, exp in config["experiments"].items():
        need("units", exp["units"], f"experiments.{name}.units", config["units"])
        if exp.get("lm") is not None:
            need("lm", exp["lm"], f"experiments.{name}.lm", config["lms"])
    check_data_layouts(config)
