"""Evaluation stage: sWUGGY / sBLIMP / tSC / sSC per experiment, ABX and unit quality per units config, ABX on
continuous features per encoder layer, and on codebook-head probabilities where a units entry asks for it
(`abx_codebook_probs: true`).

Each job's `--config` (eval.config) carries what is evaluated, from which the metrics file takes its labels.
"""


rule eval_slm21:
    input:
        scores=experiment_scores,
        gold=lambda wc: f"{benchmark_layout(wc.benchmark)[wc.lmtask]}/gold.csv",
    output:
        metrics="results/eval/experiments/{experiment}/{benchmark}/{lmtask}.json",
        submission=directory("results/eval/experiments/{experiment}/{benchmark}/submission-{lmtask}"),
    log:
        "logs/eval_slm21/{experiment}/{benchmark}/{lmtask}.log",
    wildcard_constraints:
        lmtask="lexical|syntactic",
    # Seconds of pandas: not worth a cluster job.
    localrule: True
    params:
        job=scores_job_json,
    shell:
        "python -m eval.slm21 {wildcards.lmtask} --gold {input.gold} --scores {input.scores} "
        "--out {output.metrics} --submission {output.submission} --config '{params.job}' > {log} 2>&1"


rule zerospeech_submission:
    """One ZeroSpeech sLM21 submission folder per LM experiment (meta.yaml, params.yaml, lexical/ and syntactic/
    per set), merged from the per-task parts; scripts/zrc_validate.sh checks it with the official package.
    """
    input:
        submission_parts,
    output:
        directory("results/eval/experiments/{experiment}/submission"),
    log:
        "logs/zerospeech_submission/{experiment}.log",
    # Copies a few text files: not worth a cluster job.
    localrule: True
    params:
        job=submission_json,
    shell:
        "python -m eval.submission --parts {input} --out {output} --config '{params.job}' > {log} 2>&1"


rule eval_storycloze:
    input:
        scores=experiment_scores,
        folder=lambda wc: benchmark_layout(wc.benchmark)[wc.lmtask],
    output:
        "results/eval/experiments/{experiment}/{benchmark}/{lmtask}.json",
    log:
        "logs/eval_storycloze/{experiment}/{benchmark}/{lmtask}.log",
    wildcard_constraints:
        lmtask="sSC|tSC",
    localrule: True
    params:
        job=scores_job_json,
    shell:
        "python -m eval.storycloze --dir {input.folder} --scores {input.scores} --task {wildcards.lmtask} "
        "--out {output} --config '{params.job}' > {log} 2>&1"


rule eval_abx_units:
    input:
        units="results/units/{units}/{benchmark}-abx/frames.parquet",
        item=lambda wc: benchmark_layout(wc.benchmark)[f"{wc.abxkind}_item"],
    output:
        "results/eval/units/{units}/{benchmark}/abx_{abxkind}.json",
    log:
        "logs/eval_abx_units/{units}/{benchmark}/{abxkind}.log",
    params:
        job=abx_units_json,
    shell:
        "python -m eval.abx --item {input.item} --units {input.units} --out {output} --config '{params.job}' "
        "> {log} 2>&1"


rule eval_abx_features:
    input:
        features="results/features/{encoder}/L{layer}/{benchmark}-abx/_SUCCESS.json",
        item=lambda wc: benchmark_layout(wc.benchmark)[f"{wc.abxkind}_item"],
    output:
        "results/eval/features/{encoder}/L{layer}/{benchmark}/abx_{abxkind}.json",
    log:
        "logs/eval_abx_features/{encoder}/L{layer}/{benchmark}/{abxkind}.log",
    params:
        job=abx_features_json,
        features=lambda wc, input: os.path.dirname(input.features),
    shell:
        "python -m eval.abx --item {input.item} --features {params.features} --out {output} "
        "--config '{params.job}' > {log} 2>&1"


rule extract_codebook_probs:
    """Codebook-head probabilities (frames, codebook size) of one SpidR / DinoSR layer, for their ABX."""
    input:
        encoder=lambda wc: encoder_inputs(wc.encoder),
        manifest=benchmark_file("abx_manifest"),
    output:
        # the folder's last file, as for extract_features: a half-done extraction resumes file by file
        "results/codebook_probs/{encoder}/L{layer}/{benchmark}-abx/_SUCCESS.json",
    log:
        "logs/extract_codebook_probs/{encoder}/L{layer}/{benchmark}.log",
    benchmark:
        "logs/benchmarks/extract_codebook_probs/{encoder}/L{layer}/{benchmark}.tsv"
    threads: 2
    resources:
        gpu=0,
    params:
        features=features_json,
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m units.extract features --codebook-probs --config '{params.features}' "
        "--manifest {input.manifest} --out {params.out} --no-progress > {log} 2>&1"


rule eval_abx_codebook_probs:
    """eval.abx reads the representation from the folder's _CONFIG.json (Quantizer label codebook_probs)."""
    input:
        features="results/codebook_probs/{encoder}/L{layer}/{benchmark}-abx/_SUCCESS.json",
        item=lambda wc: benchmark_layout(wc.benchmark)[f"{wc.abxkind}_item"],
    output:
        "results/eval/codebook_probs/{encoder}/L{layer}/{benchmark}/abx_{abxkind}.json",
    log:
        "logs/eval_abx_codebook_probs/{encoder}/L{layer}/{benchmark}/{abxkind}.log",
    params:
        job=abx_features_json,
        features=lambda wc, input: os.path.dirname(input.features),
    shell:
        "python -m eval.abx --item {input.item} --features {params.features} --out {output} "
        "--config '{params.job}' > {log} 2>&1"


rule eval_unit_quality:
    """PNMI and purities; a `pooled` benchmark gives several (units, phones) pairs, counted together."""
    input:
        unpack(unit_quality_inputs),
    output:
        "results/eval/units/{units}/{benchmark}/unit_quality.json",
    log:
        "logs/eval_unit_quality/{units}/{benchmark}.log",
    params:
        job=unit_quality_json,
    shell:
        "python -m eval.unit_quality --units {input.units} --phones {input.phones} --out {output} "
        "--config '{params.job}' > {log} 2>&1"
