"""Report stage: every metrics file of every experiment into tables (Markdown, CSV, LaTeX) and plots."""


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


# Encoders pretrained here with a learning-curve probe (train.curve_interval; eval.curves).
CURVE_ENCODERS = [e for e in ENCODERS if curve_inputs(e)]


def learning_curve_targets():
    return ["results/report/learning_curves.png"] if CURVE_ENCODERS else []


rule learning_curves:
    input:
        # The checkpoints order the jobs; the points are in each run's metrics log (its resumable work directory).
        expand("results/encoders/{encoder}/checkpoint.pt", encoder=CURVE_ENCODERS),
    output:
        png=report("results/report/learning_curves.png", category="Plots"),
        csv="results/report/learning_curves.csv",
    log:
        "logs/learning_curves.log",
    localrule: True
    params:
        metrics=" ".join(f"{e}=work/pretrain/{e}/metrics.jsonl" for e in CURVE_ENCODERS),
    shell:
        "python -m eval.curves plot --metrics {params.metrics} --out results/report > {log} 2>&1"
