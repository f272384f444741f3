"""Units stage: k-means fitting, frame-level units, deduplication, continuous features for ABX.

Every job of a units config gets the same key-sorted `--config` JSON (units.config.UnitsConfig, built by
pipeline.config): encoder spec, layer, quantizer, k-means fit, extraction settings and the workflow's names.
"""


def benchmark_group(wildcards):
    """`group:` of a benchmark set's units chain: its one extraction shard, gather and dedup run one after the other as
    one SLURM job (minutes, hundreds of them in the paper DAG); a training corpus's jobs stay separate (hours each).
    Only chains: jobs side by side in a group would add up their CPUs, memory and GPUs into one allocation.
    """
    return None if wildcards.dataset.startswith("corpus-") else "benchmark_units"


rule fit_kmeans:
    input:
        encoder=lambda wc: encoder_inputs(units_entry(wc)["encoder"]),
        manifest=lambda wc: corpus_manifest(units_entry(wc)["fit"]["corpus"]),
    output:
        "results/kmeans/{units}/kmeans.npz",
    log:
        "logs/fit_kmeans/{units}.log",
    benchmark:
        "logs/benchmarks/fit_kmeans/{units}.tsv"
    threads: 2
    resources:
        gpu=0,
    params:
        units=units_json,
    shell:
        "python -m units.kmeans fit --config '{params.units}' --manifest {input.manifest} --out {output} "
        "--no-progress > {log} 2>&1"


rule quantize:
    """One corpus shard (extraction.shards per dataset): an independent job, resumable on its own."""
    input:
        unpack(quantize_inputs),
    output:
        # temp: the gathered file holds the same rows; shards of a finished dataset only take disk
        temp("results/units/{units}/{dataset}/shards/{shard}-of-{nshards}.parquet"),
    log:
        "logs/quantize/{units}/{dataset}/{shard}-of-{nshards}.log",
    benchmark:
        "logs/benchmarks/quantize/{units}/{dataset}/{shard}-of-{nshards}.tsv"
    group:
        benchmark_group
    threads: 2
    resources:
        gpu=0,
    params:
        units=units_json,
        kmeans=lambda wc, input: (f"--kmeans {input.kmeans}" if "kmeans" in input.keys() else ""),
    shell:
        "python -m units.extract units --config '{params.units}' {params.kmeans} --manifest {input.manifest} "
        "--shard {wildcards.shard} --num-shards {wildcards.nshards} --out {output} --no-progress > {log} 2>&1"


rule gather_units:
    """Streams the shards into the dataset's units file (the same rows and order whatever the shard count)."""
    input:
        unit_shards,
    output:
        "results/units/{units}/{dataset}/frames.parquet",
    log:
        "logs/gather_units/{units}/{dataset}.log",
    group:
        benchmark_group
    shell:
        "python -m units.gather {input} --out {output} > {log} 2>&1"


rule dedup:
    input:
        "results/units/{units}/{dataset}/frames.parquet",
    output:
        units="results/units/{units}/{dataset}/dedup.parquet",
        stats="results/units/{units}/{dataset}/dedup_stats.json",
    log:
        "logs/dedup/{units}/{dataset}.log",
    group:
        benchmark_group
    shell:
        "python -m units.dedup {input} {output.units} --stats {output.stats} > {log} 2>&1"


rule extract_features:
    input:
        encoder=lambda wc: encoder_inputs(wc.encoder),
        manifest=benchmark_file("abx_manifest"),
    output:
        # The folder's last file: declaring the folder itself would make Snakemake delete a half-done extraction,
        # which otherwise resumes file by file.
        "results/features/{encoder}/L{layer}/{benchmark}-abx/_SUCCESS.json",
    log:
        "logs/extract_features/{encoder}/L{layer}/{benchmark}.log",
    benchmark:
        "logs/benchmarks/extract_features/{encoder}/L{layer}/{benchmark}.tsv"
    threads: 2
    resources:
        gpu=0,
    params:
        features=features_json,
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m units.extract features --config '{params.features}' --manifest {input.manifest} "
        "--out {params.out} --no-progress > {log} 2>&1"
