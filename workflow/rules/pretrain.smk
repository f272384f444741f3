"""Pretraining stage: SpidR / DinoSR self-supervised training (torchrun; one process per GPU, or one on CPU)."""


rule pretrain:
    input:
        manifest=lambda wc: corpus_manifest(config["encoders"][wc.encoder]["corpus"]),
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
    shell:
        # common.launch: torchrun --standalone on one node, one torchrun per node through srun otherwise; in a SLURM
        # job it stops the trainer (checkpoint, exit 75) before the time limit, and the retry resumes from workdir.
        "python -m common.launch --nodes {resources.nodes} --gpus {resources.gpu} --gres '{resources.gres}' "
        "--threads {threads} spidr.train "
        "--manifest {input.manifest} --workdir {params.workdir} --out {output} --config '{params.hp}' "
        "--threads {threads} > {log} 2>&1"
