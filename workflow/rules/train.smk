# Train stage: one job per configured head (train_head) and per baseline (train_baseline), each
# reading only the train split's manifest + shards (the test splits are never inputs here) and
# writing results/heads/{name}/model.pt, history.csv, selection.json.
# Each job gets only its own config entry (+ the shared train: section), so changing one head's
# settings reruns that head alone.


# TRAIN_ROWS, TRAIN_MEM_MB and HEAD_RUNTIME (resource estimates, shared with improve.smk): common.smk.


rule train_head:
    input:
        manifest=manifest_path("train"),
        qc=qc_path("train"),  # QC must pass (or warn) before training; it also checks checksums
        code=code("train.train_head"),
    output:
        model=head_file("{head}", "model.pt"),
        history=report(
            head_file("{head}", "history.csv"),
            caption="../report/train.rst",
            category="8. Training",
            subcategory="{head}",
        ),
        selection=head_file("{head}", "selection.json"),
    log:
        "logs/train/{head}.log",
    benchmark:
        "benchmarks/train/{head}.tsv"
    wildcard_constraints:
        head="|".join(re.escape(h) for h in TRAIN_HEADS) or "no-heads",
    conda:
        "../../envs/featgap.yaml"
    threads: TRAIN["threads"]
    resources:
        mem_mb=TRAIN_MEM_MB,
        runtime=lambda wc: HEAD_RUNTIME[wc.head],
    params:
        head=lambda wc: as_json(config["heads"][wc.head]),
        train=as_json(TRAIN),
        num_classes=config["num_classes"],
        seed=config["seed"],
        outputs=output_args,
    shell:
        "python -m scripts.train.train_head --manifest {input.manifest:q} {params.outputs}"
        " --name {wildcards.head:q} --options {params.head} --train-options {params.train}"
        " --num-classes {params.num_classes} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


rule train_baseline:
    input:
        manifest=manifest_path("train"),
        qc=qc_path("train"),  # QC must pass (or warn) before training; it also checks checksums
        code=code("train.train_baseline"),
    output:
        model=head_file("{baseline}", "model.pt"),
        history=report(
            head_file("{baseline}", "history.csv"),
            caption="../report/train.rst",
            category="8. Training",
            subcategory="{baseline}",
        ),
        selection=head_file("{baseline}", "selection.json"),
    log:
        "logs/train/{baseline}.log",
    benchmark:
        "benchmarks/train/{baseline}.tsv"
    wildcard_constraints:
        baseline="|".join(re.escape(b) for b in BASELINES) or "no-baselines",
    conda:
        "../../envs/featgap.yaml"
    threads: TRAIN["threads"]
    resources:
        mem_mb=TRAIN_MEM_MB,
        # sklearn fits: ~1e8 row·dim·class per second on 2 cores (measured), at least 10 minutes.
        runtime=10 + int(TRAIN_ROWS * config["dim"] * config["num_classes"] / 1e8 / 60),
    params:
        baseline=lambda wc: as_json(config["baselines"][wc.baseline]),
        train=as_json(TRAIN),
        num_classes=config["num_classes"],
        seed=config["seed"],
        outputs=output_args,
    shell:
        "python -m scripts.train.train_baseline --manifest {input.manifest:q} {params.outputs}"
        " --name {wildcards.baseline:q} --options {params.baseline} --train-options {params.train}"
        " --num-classes {params.num_classes} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


ALL_TARGETS.extend(
    f
    for head in HEADS
    for f in (
        targets(rules.train_head, head=head) if head in TRAIN_HEADS else targets(rules.train_baseline, baseline=head)
    )
)
for_report("selection", rules.train_head.output.selection, head=TRAIN_HEADS)
for_report("selection", rules.train_baseline.output.selection, baseline=BASELINES)
benchmarked(rules.train_head, head=TRAIN_HEADS)
benchmarked(rules.train_baseline, baseline=BASELINES)
