"""Units stage: benchmark manifests, k-means fitting, frame-level units, deduplication, features for ABX."""


rule benchmark_manifest:
    input:
        # For the demo, the generated benchmark must exist first; real benchmarks are plain folders.
        lambda wc: (
            [f"{DEMO}/info.json"]
            if config["benchmarks"][wc.benchmark]["source"] == "demo"
            else []
        ),
    output:
        "resources/benchmarks/{benchmark}/{lmtask}/manifest.tsv",
    log:
        "logs/benchmark_manifest/{benchmark}/{lmtask}.log",
    threads: 2
    params:
        root=lambda wc: benchmark_layout(wc.benchmark)[wc.lmtask],
    shell:
        "python -m data.manifest {params.root} {output} --speaker prefix --threads {threads} > {log} 2>&1"


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
        encoder=lambda wc: encoder_spec(units_entry(wc)["encoder"]),
        layer=lambda wc: units_entry(wc)["layer"],
        k=lambda wc: units_entry(wc)["k"],
        seed=lambda wc: units_entry(wc)["fit"]["seed"],
        max_frames=lambda wc: units_entry(wc)["fit"]["max_frames"],
        niter=lambda wc: units_entry(wc)["fit"]["niter"],
        bad_audio=config["eval"]["bad_audio"],
    shell:
        "python -m units.kmeans fit --encoder '{params.encoder}' --layer {params.layer} --manifest {input.manifest} "
        "--k {params.k} --seed {params.seed} --max-frames {params.max_frames} --niter {params.niter} "
        "--out {output} --bad-audio {params.bad_audio} --no-progress > {log} 2>&1"


rule quantize:
    input:
        unpack(quantize_inputs),
    output:
        "results/units/{units}/{dataset}/frames.parquet",
    log:
        "logs/quantize/{units}/{dataset}.log",
    benchmark:
        "logs/benchmarks/quantize/{units}/{dataset}.tsv"
    threads: 2
    resources:
        gpu=0,
    params:
        encoder=lambda wc: encoder_spec(units_entry(wc)["encoder"]),
        layer=lambda wc: units_entry(wc)["layer"],
        quantizer=lambda wc: units_entry(wc)["quantizer"],
        kmeans=lambda wc, input: (
            f"--kmeans {input.kmeans}" if "kmeans" in input.keys() else ""
        ),
        bad_audio=config["eval"]["bad_audio"],
    shell:
        "python -m units.extract units --encoder '{params.encoder}' --layer {params.layer} "
        "--quantizer {params.quantizer} {params.kmeans} --manifest {input.manifest} --out {output} "
        "--bad-audio {params.bad_audio} --no-progress > {log} 2>&1"


rule dedup:
    input:
        "results/units/{units}/{dataset}/frames.parquet",
    output:
        units="results/units/{units}/{dataset}/dedup.parquet",
        stats="results/units/{units}/{dataset}/dedup_stats.json",
    log:
        "logs/dedup/{units}/{dataset}.log",
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
        encoder=lambda wc: encoder_spec(wc.encoder),
        out=lambda wc, output: os.path.dirname(output[0]),
        bad_audio=config["eval"]["bad_audio"],
    shell:
        "python -m units.extract features --encoder '{params.encoder}' --layer {wildcards.layer} "
        "--manifest {input.manifest} --out {params.out} --bad-audio {params.bad_audio} --no-progress > {log} 2>&1"
