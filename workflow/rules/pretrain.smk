"""Pretraining stage: SpidR / DinoSR self-supervised training (torchrun; one process per GPU, or one on CPU)."""

from common.launch import gpus_per_node
from spidr.config import ConfigError, batch_plan
from spidr.config import from_dict as spidr_train_config


class PretrainBatch:
    """`{pretrain_batch:ENCODER NODES GPU GRES|}` in a message: how the job's processes reach the encoder's global
    batch (world size x accumulation x per-GPU batch), or the error the trainer will stop with, so a dry run shows it.

    A message formats only the job's attributes, and the world size must stay out of params (changing it reruns
    nothing): it is worked out here from the resources in the format spec, as common.launch does.
    """

    def __format__(self, spec):
        encoder, nodes, gpu, gres = spec.removesuffix("|").split(" ")
        world = int(nodes) * max(gpus_per_node(int(nodes), int(gpu), gres), 1)
        entry = config["encoders"][encoder]
        where = f"encoders.{encoder}.train"
        train = spidr_train_config({"kind": entry["kind"], **entry["train"]}, where)
        try:
            return batch_plan(train.data, world).describe()
        # Not fatal here: a dry run with other resources must still plan the DAG.
        except ConfigError as err:
            return f"WILL FAIL with resources nodes={nodes} gpu={gpu} gres={gres!r}: {where}: {err}"


pretrain_batch = PretrainBatch()


def curve_inputs(encoder):
    """The dev set of an encoder's learning-curve probe (train.curve_interval): the ABX manifest and 100 Hz phone
    labels of the first evaluated benchmark that has them; none without curve_interval."""
    entry = config["encoders"][encoder]
    if "train" not in entry:
        return {}
    train = spidr_train_config({"kind": entry["kind"], **entry["train"]})
    if train.curve_interval is None:
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
        hp=lambda wc: sorted_json(
            {
                "kind": config["encoders"][wc.encoder]["kind"],
                **config["encoders"][wc.encoder]["train"],
            }
        ),
        # Resume state lives outside the declared output: Snakemake deletes outputs of failed jobs.
        workdir="work/pretrain/{encoder}",
        entry=pretrain_entry,
    message:
        "pretrain {wildcards.encoder}: {pretrain_batch:{wildcards.encoder} {resources.nodes} {resources.gpu} {resources.gres}|}"
    shell:
        # common.launch: torchrun --standalone on one node, one torchrun per node through srun otherwise; in a SLURM
        # job it stops the trainer (checkpoint, exit 75) before the time limit, and the retry resumes from workdir.
        "python -m common.launch --nodes {resources.nodes} --gpus {resources.gpu} --gres '{resources.gres}' "
        "--threads {threads} {params.entry} "
        "--manifest {input.manifest} --workdir {params.workdir} --out {output} --config '{params.hp}' "
        "--threads {threads} > {log} 2>&1"
