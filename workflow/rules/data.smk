"""Data stage: the generated demo corpus, manifests of real corpora and of every benchmark set.

A folder of audio is no Snakemake input (its files are not known before the manifest lists them), so each manifest
rule has the folder's fingerprint (data.walk: relative paths, sizes and mtimes of its audio files) as a param: an
edited, added, deleted or restored file changes it, and Snakemake reruns the manifest and what depends on it.
"""

from data.walk import fingerprint


def corpus_fingerprint(wildcards):
    corpus = config["corpora"][wildcards.corpus]
    return fingerprint(corpus["root"], pipeline.manifest_config(config, wildcards.corpus).ext)


def benchmark_fingerprint(wildcards):
    if config["benchmarks"][wildcards.benchmark]["source"] == "demo":
        return "generated"  # the demo's info.json is the input
    return fingerprint(benchmark_layout(wildcards.benchmark)[wildcards.lmtask], ManifestConfig().ext)


rule demo_data:
    output:
        info=f"{DEMO}/info.json",
        train=f"{DEMO}/train/manifest.tsv",
        dev=f"{DEMO}/dev/manifest.tsv",
        triphone=f"{DEMO}/dev/triphone.item",
        phoneme=f"{DEMO}/dev/phoneme.item",
        phones=f"{DEMO}/dev/phones_100hz.jsonl",
        lexical=f"{DEMO}/sLM21/lexical/dev/gold.csv",
        syntactic=f"{DEMO}/sLM21/syntactic/dev/gold.csv",
        lexical_test=f"{DEMO}/sLM21/lexical/test/gold.csv",
        syntactic_test=f"{DEMO}/sLM21/syntactic/test/gold.csv",
        ssc=directory(f"{DEMO}/storycloze/sSC"),
        tsc=directory(f"{DEMO}/storycloze/tSC"),
    log:
        "logs/demo_data.log",
    benchmark:
        "logs/benchmarks/demo_data.tsv"
    threads: 2
    params:
        demo=demo_config(),
        out=lambda wc, output: os.path.dirname(output.info),
    shell:
        "python -m data.demo {params.out} --config '{params.demo}' --threads {threads} > {log} 2>&1"


rule manifest:
    output:
        "resources/corpora/{corpus}/manifest.tsv",
    log:
        "logs/manifest/{corpus}.log",
    benchmark:
        "logs/benchmarks/manifest/{corpus}.tsv"
    threads: 4
    params:
        root=lambda wc: config["corpora"][wc.corpus]["root"],
        manifest=lambda wc: manifest_config(wc.corpus),
        fingerprint=corpus_fingerprint,
    shell:
        "python -m data.manifest {params.root} {output} --config '{params.manifest}' --threads {threads} "
        "> {log} 2>&1"


rule subset:
    input:
        lambda wc: corpus_manifest(config["corpora"][wc.corpus]["of"]),
    output:
        "resources/subsets/{corpus}/manifest.tsv",
    log:
        "logs/subset/{corpus}.log",
    params:
        subset=lambda wc: subset_config(wc.corpus),
    shell:
        "python -m data.subset {input} {output} --config '{params.subset}' > {log} 2>&1"


rule benchmark_manifest:
    input:
        # For the demo, the generated benchmark must exist first; real benchmarks are plain folders.
        lambda wc: ([f"{DEMO}/info.json"] if config["benchmarks"][wc.benchmark]["source"] == "demo" else []),
    output:
        "resources/benchmarks/{benchmark}/{lmtask}/manifest.tsv",
    log:
        "logs/benchmark_manifest/{benchmark}/{lmtask}.log",
    threads: 2
    params:
        root=lambda wc: benchmark_layout(wc.benchmark)[wc.lmtask],
        # Benchmark wavs are flat folders named <speaker>_... or <speaker>-...; gold files name them by stem.
        manifest=dumps(ManifestConfig(speaker="prefix", ids="stem")),
        fingerprint=benchmark_fingerprint,
    shell:
        "python -m data.manifest {params.root} {output} --config '{params.manifest}' --threads {threads} "
        "> {log} 2>&1"
