"""Evaluation stage: sWUGGY / sBLIMP / tSC / sSC per experiment, ABX and unit quality per units config, report."""


rule eval_slm21:
    input:
        scores=experiment_scores,
        gold=lambda wc: f"{benchmark_layout(wc.benchmark)[wc.lmtask]}/gold.csv",
    output:
        metrics="results/eval/experiments/{experiment}/{benchmark}/{lmtask}.json",
        submission=directory(
            "results/eval/experiments/{experiment}/{benchmark}/submission-{lmtask}"
        ),
    log:
        "logs/eval_slm21/{experiment}/{benchmark}/{lmtask}.log",
    wildcard_constraints:
        lmtask="lexical|syntactic",
    # Seconds of pandas: not worth a cluster job.
    localrule: True
    params:
        labels=lambda wc: sorted_json(experiment_labels(wc.experiment)),
    shell:
        "python -m eval.slm21 {wildcards.lmtask} --gold {input.gold} --scores {input.scores} "
        "--out {output.metrics} --submission {output.submission} --labels '{params.labels}' > {log} 2>&1"


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
        labels=lambda wc: sorted_json(experiment_labels(wc.experiment)),
    shell:
        "python -m eval.storycloze --dir {input.folder} --scores {input.scores} --task {wildcards.lmtask} "
        "--out {output} --labels '{params.labels}' > {log} 2>&1"


rule eval_abx_units:
    input:
        units="results/units/{units}/{benchmark}-abx/frames.parquet",
        item=lambda wc: benchmark_layout(wc.benchmark)[f"{wc.abxkind}_item"],
    output:
        "results/eval/units/{units}/{benchmark}/abx_{abxkind}.json",
    log:
        "logs/eval_abx_units/{units}/{benchmark}/{abxkind}.log",
    params:
        labels=lambda wc: sorted_json(units_labels(wc.units)),
        abx=sorted_json(config["eval"]["abx"]),
    shell:
        "python -m eval.abx --item {input.item} --units {input.units} --out {output} --config '{params.abx}' "
        "--labels '{params.labels}' > {log} 2>&1"


rule eval_abx_features:
    input:
        features="results/features/{encoder}/L{layer}/{benchmark}-abx/_SUCCESS.json",
        item=lambda wc: benchmark_layout(wc.benchmark)[f"{wc.abxkind}_item"],
    output:
        "results/eval/features/{encoder}/L{layer}/{benchmark}/abx_{abxkind}.json",
    log:
        "logs/eval_abx_features/{encoder}/L{layer}/{benchmark}/{abxkind}.log",
    params:
        labels=lambda wc: sorted_json(
            {
                "encoder": wc.encoder,
                "encoder_kind": config["encoders"][wc.encoder]["kind"],
                "layer": int(wc.layer),
            }
        ),
        abx=sorted_json(config["eval"]["abx"]),
        features=lambda wc, input: os.path.dirname(input.features),
    shell:
        "python -m eval.abx --item {input.item} --features {params.features} --out {output} --config '{params.abx}' "
        "--labels '{params.labels}' > {log} 2>&1"


rule eval_unit_quality:
    input:
        units="results/units/{units}/{benchmark}-abx/frames.parquet",
        phones=lambda wc: benchmark_layout(wc.benchmark)["phones"],
    output:
        "results/eval/units/{units}/{benchmark}/unit_quality.json",
    log:
        "logs/eval_unit_quality/{units}/{benchmark}.log",
    params:
        labels=lambda wc: sorted_json(units_labels(wc.units)),
    shell:
        "python -m eval.unit_quality --units {input.units} --phones {input.phones} --out {output} "
        "--labels '{params.labels}' > {log} 2>&1"


rule report:
    input:
        experiment_metrics(),
    output:
        table=report("results/report/table.md", category="Results"),
        csv="results/report/table.csv",
        tex="results/report/table.tex",
        long="results/report/metrics_long.csv",
        summary="results/report/report.json",
        by_layer=report("results/report/metric_vs_layer.png", category="Plots"),
        correlations=report("results/report/correlations.png", category="Plots"),
    log:
        "logs/report.log",
    localrule: True
    shell:
        "python -m eval.report --metrics {input} --out results/report > {log} 2>&1"
