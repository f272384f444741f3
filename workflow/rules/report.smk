"""Report stage: every metrics file of every experiment into tables (Markdown, CSV, LaTeX) and plots, each table
also in the published long format (published_schema/), and ours beside the published results when
`report.published` names their folder (eval.published).
"""

import json

from eval.published import TABLE_NAMES
from pipeline.published import published_names

# Our names in the published tables' spelling (report.published_names), checked while the workflow parses.
PUBLISHED_NAMES = json.dumps(published_names(config).to_dict(), sort_keys=True)
PUBLISHED = (config.get("report") or {}).get("published")
# Each table in the published long format, and our intervals beside it (what eval.published compares).
SCHEMA_FILES = [f"results/report/published_schema/{t}{part}.csv" for t in TABLE_NAMES for part in ("", ".intervals")]


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
        schema=SCHEMA_FILES,
    log:
        "logs/report.log",
    localrule: True
    params:
        names=PUBLISHED_NAMES,
    shell:
        "python -m eval.report --metrics {input} --out results/report --published-names '{params.names}' "
        "> {log} 2>&1"


def published_targets():
    return ["results/published/comparison.md"] if PUBLISHED else []


rule published:
    """Ours beside the published results (report.published: e.g. a checkout's facebookresearch/spidr paper/results)."""
    input:
        ours=rules.report.output.schema,
        published=PUBLISHED or [],
    output:
        md=report("results/published/comparison.md", category="Published"),
        csv="results/published/comparison.csv",
        one_side="results/published/one_side.csv",
        summary="results/published/comparison.json",
    log:
        "logs/published.log",
    localrule: True
    shell:
        "python -m eval.published --ours results/report --published {input.published} --out results/published "
        "> {log} 2>&1"


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
