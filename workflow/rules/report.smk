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
