"""Unit-LM stage: train on the deduplicated units of a corpus, then score every benchmark utterance."""


rule train_lm:
    input:
        lm_train_units,
    output:
        directory("results/lm/{units}/{lm}/model"),
    log:
        "logs/train_lm/{units}/{lm}.log",
    benchmark:
        "logs/benchmarks/train_lm/{units}/{lm}.tsv"
    threads: 2
    resources:
        # GPUs of the job (one node), or with nodes > 1 per node through gres ("gpu:8"); see slurm/README.md.
        gpu=0,
        nodes=1,
        gres="",
    params:
        hp=lambda wc: sorted_json(config["lms"][wc.lm]["train"]),
        # Resume state lives outside the declared output: Snakemake deletes outputs of failed jobs.
        workdir="work/lm/{units}/{lm}",
    shell:
        # common.launch: see rule pretrain.
        "python -m common.launch --nodes {resources.nodes} --gpus {resources.gpu} --gres '{resources.gres}' "
        "--threads {threads} lm.train "
        "--units {input} --workdir {params.workdir} --out {output} --config '{params.hp}' > {log} 2>&1"


rule score_lm:
    input:
        model="results/lm/{units}/{lm}/model",
        units="results/units/{units}/{benchmark}-{lmtask}/dedup.parquet",
    output:
        scores="results/lm/{units}/{lm}/scores/{benchmark}-{lmtask}.tsv",
        # Normalisation, BOS/EOS handling and provenance of the scores.
        conventions="results/lm/{units}/{lm}/scores/{benchmark}-{lmtask}.tsv.json",
    log:
        "logs/score_lm/{units}/{lm}/{benchmark}-{lmtask}.log",
    threads: 2
    resources:
        gpu=0,
    params:
        score=score_config(),
    shell:
        "python -m lm.score --model {input.model} --units {input.units} --out {output.scores} "
        "--config '{params.score}' > {log} 2>&1"
