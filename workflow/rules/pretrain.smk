"""Pretraining stage: SpidR / DinoSR self-supervised training (torchrun; one process per GPU, or one on CPU)."""

from spidr.config import ConfigError


def curve_inputs(encoder):
    """The dev set of an encoder's learning-curve probe (train.curve_interval): the ABX manifest and 100 Hz phone
    labels of the first evaluated benchmark that has them; none without curve_interval."""
    if "train" not in config["encoders"][encoder]:
        return {}
    if pipeline.pretrain_config(config, encoder).curve_interval is None:
        return {}
    with_phones = [b for b in EVAL.benchmarks if "phones" in benchmark_layout(b)]
    if not with_phones:
        raise ConfigError(
            f"encoders.{encoder}.train.curve_interval: the learning-curve probe needs phone labels, and no "
            f"benchmark of eval.benchmarks ({list(EVAL.benchmarks)}) has 'phones'"
        )
    layout = benchmark_layout(with_phones[0])
    return {"dev": layout["abx_manifest"], "phones": layout["phones"]}


def pretrain_entry(wildcards, input):
    """spidr.train, or eval.curves' wrapper of it with the dev-set probe when the encoder logs learning curves."""
    if "phones" not in input.keys():
        return "spidr.train"
    return f"eval.curves train --dev-manifest {input.dev} --phones {input.phones}"


rule pretrain:
    input:
        unpack(
            lambda wc: {
                "manifest": corpus_manifest(config["encoders"][wc.encoder]["corpus"]),
                **curve_inputs(wc.encoder),
            }
        ),
    output:
        "results/encoders/{encoder}/checkpoint.pt",
    log:
        "logs/pretrain/{encoder}.log",
    benchmark:
        "logs/benchmarks/pretrain/{encoder}.tsv"
    threads: 2
    resources:
        # GPUs of the job (one node), or with nodes > 1 per node through gres ("gpu:8"); see slurm/README.md.
        gpu=0,
        nodes=1,
        gres="",
    params:
        hp=pretrain_json,
        # Resume state lives outside the declared output: Snakemake deletes outputs of failed jobs.
        workdir="work/pretrain/{encoder}",
        entry=pretrain_entry,
    shell:
        # common.launch: torchrun --standalone on one node, one torchrun per node through srun otherwise; in a SLURM
        # job it stops the trainer (checkpoint, exit 75) before the time limit, and the retry resumes from workdir.
        "python -m common.launch --nodes {resources.nodes} --gpus {resources.gpu} --gres '{resources.gres}' "
        "--threads {threads} {params.entry} "
        "--manifest {input.manifest} --workdir {params.workdir} --out {output} --config '{params.hp}' "
        "--threads {threads} > {log} 2>&1"
