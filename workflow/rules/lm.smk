"""Unit-LM stage: pack the deduplicated units of a corpus (CPU), train on them, then score every benchmark
utterance."""

import pipeline.layout as layout


rule pack_lm_data:
    """Token arrays of the train/valid split, built before training so that no GPU waits on packing."""
    input:
        lm_train_units,
    output:
        directory("results/lm/{units}/{lm}/data"),
    log:
        "logs/pack_lm_data/{units}/{lm}.log",
    benchmark:
        "logs/benchmarks/pack_lm_data/{units}/{lm}.tsv"
    threads: 1
    resources:
        gpu=0,
    params:
        # only the split settings: changing the LM's learning rate does not repack the corpus
        split=lm_split_json,
    shell:
        "python -m lm.pack --units {input} --out {output} --config '{params.split}' > {log} 2>&1"


rule train_lm:
    input:
        rules.pack_lm_data.output,
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
        hp=lm_train_json,
        # Resume state lives outside the declared output: Snakemake deletes outputs of failed jobs.
        workdir="work/lm/{units}/{lm}",
    shell:
        # common.launch: see rule pretrain.
        "python -m common.launch --nodes {resources.nodes} --gpus {resources.gpu} --gres '{resources.gres}' "
        "--threads {threads} lm.train "
        "--data {input} --workdir {params.workdir} --out {output} --config '{params.hp}' > {log} 2>&1"


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


# Every training layout (world size x accumulation x micro-batch = the recipe's global batch) from the resources the
# profiles give pretrain and train_lm, printed by the planning Snakemake process (not again inside each job); one
# that cannot reach its batch is an error here, before anything is submitted (pipeline.layout).
if workflow.is_main_process:
    _layouts = layout.report(
        config,
        {name: layout.layout_resources(getattr(rules, name).rule.resources) for name in ("pretrain", "train_lm")},
    )
    if _layouts:
        print(_layouts, file=sys.stderr)
