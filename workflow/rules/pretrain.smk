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
        gpu=0,
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
        # torchrun forwards SIGUSR1 (SLURM's early warning) to the workers as it does SIGTERM: they checkpoint, exit
        "TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 "
        "torchrun --standalone --nproc_per_node=$(( {resources.gpu} > 1 ? {resources.gpu} : 1 )) -m spidr.train "
        "--manifest {input.manifest} --workdir {params.workdir} --out {output} --config '{params.hp}' "
        "--threads {threads} > {log} 2>&1"
