"""The textless spoken-LM pipeline: data -> SpidR pretraining -> units -> dedup -> unit LM -> evaluation -> report.

Run `snakemake --cores all` (laptop) or `snakemake --profile slurm all` (cluster) from this directory.
Rules only plumb paths and parameters into module entry points (`python -m ...`), so every stage also runs by hand.

`snakemake --lint` leaves two kinds of lints, on purpose: no rule names a conda environment or container (the
software is the project's pinned venv, `make setup`; jobs run its interpreter, also on SLURM with --export=ALL),
and common.smk edits PATH, which is not a variable the user must provide (it puts that interpreter first).
"""

# config.yaml is the default experiment: any --configfile replaces it rather than merging into it. Snakemake does
# not pass --replace-workflow-config on to the jobs it submits (SLURM, groups), so without this each job would
# merge the demo's entries into the recipe it was started with and fail on the first name they share.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/units.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        learning_curve_targets(),
        published_targets(),
