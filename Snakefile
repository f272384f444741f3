"""The textless spoken-LM pipeline: data -> SpidR pretraining -> units -> dedup -> unit LM -> evaluation -> report.

Run `snakemake --cores all` (laptop) or `snakemake --profile slurm all` (cluster) from this directory.
Rules only plumb paths and parameters into module entry points (`python -m ...`), so every stage also runs by hand.
"""


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        all_targets(),
