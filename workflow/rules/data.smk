"""Data stage: the generated demo corpus and manifests of real corpora."""


rule demo_data:
    output:
        info=f"{DEMO}/info.json",
        train=f"{DEMO}/train/manifest.tsv",
        dev=f"{DEMO}/dev/manifest.tsv",
        triphone=f"{DEMO}/dev/triphone.item",
        phoneme=f"{DEMO}/dev/phoneme.item",
        phones=f"{DEMO}/dev/phones_100hz.jsonl",
        lexical=f"{DEMO}/sLM21/lexical/dev/gold.csv",
        syntactic=f"{DEMO}/sLM21/syntactic/dev/gold.csv",
        ssc=directory(f"{DEMO}/storycloze/sSC"),
        tsc=directory(f"{DEMO}/storycloze/tSC"),
    log:
        "logs/demo_data.log",
    benchmark:
        "logs/benchmarks/demo_data.tsv"
    threads: 2
    params:
        demo=demo_config(),
        out=lambda wc, output: os.path.dirname(output.info),
    shell:
        "python -m data.demo {params.out} --config '{params.demo}' --threads {threads} > {log} 2>&1"


rule manifest:
    output:
        "resources/corpora/{corpus}/manifest.tsv",
    log:
        "logs/manifest/{corpus}.log",
    benchmark:
        "logs/benchmarks/manifest/{corpus}.tsv"
    threads: 4
    params:
        root=lambda wc: config["corpora"][wc.corpus]["root"],
        ext=lambda wc: " ".join(config["corpora"][wc.corpus]["ext"]),
        speaker=lambda wc: config["corpora"][wc.corpus]["speaker"],
        bad_audio=lambda wc: config["corpora"][wc.corpus]["bad_audio"],
        convert=lambda wc: (
            "--convert" if config["corpora"][wc.corpus]["convert"] else ""
        ),
    shell:
        "python -m data.manifest {params.root} {output} --ext {params.ext} --speaker {params.speaker} "
        "--bad-audio {params.bad_audio} {params.convert} --threads {threads} > {log} 2>&1"
