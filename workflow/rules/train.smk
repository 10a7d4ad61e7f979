# Train stage: one job per configured head (train_head) and per baseline (train_baseline), each
# reading only the train split's manifest + shards (the test splits are never inputs here) and
# writing results/heads/{name}/model.pt, history.csv, selection.json.
# Each job gets only its own config entry (+ the shared train: section), so changing one head's
# settings reruns that head alone.


# Train rows for resource estimates: validate.expected, else the demo's size, else 1.3M.
TRAIN_ROWS = config.get("validate", {}).get("expected", {}).get("train", {}).get("rows") or (
    config["demo"].get("train_rows") or int(1300 * config["demo"].get("train_scale", 1.0) * config["demo"]["classes"])
    if config["demo"].get("enabled")
    else 1_300_000
)
# Memory: the in-memory matrix (or the streaming budget) + logits, optimiser state, libraries.
TRAIN_MEM_MB = int(min(TRAIN_ROWS * config["dim"] * 4 / 2**20, TRAIN.get("memory_budget_mb", 12000)) * 1.1 + 2000)
# Minutes, at least 10. On the CPU: K candidates × epochs × 4·N·D·width flops at a conservative
# 30 GFLOP/s (2 cores), doubled for the refit and the holdout passes. On CUDA (train.device: cuda or
# cuda:N, as profiles/slurm sets when it asks for a GPU): loading at 50 MB/s plus every grid and
# refit step at 10 ms (an H100 replays one 12-candidate EVA-02 step in 1.3 ms; see README).
TRAIN_ON_CUDA = str(TRAIN.get("device", "auto")).startswith("cuda")
HEAD_SECONDS = {
    name: (
        TRAIN_ROWS * config["dim"] * 4 / 50e6
        + 2 * head.get("epochs", 10) * TRAIN_ROWS / head.get("batch_size", 1024) * 0.010
        if TRAIN_ON_CUDA
        else 2
        * 4
        * TRAIN_ROWS
        * config["dim"]
        * (sum(head.get("hidden", []) or []) or config["num_classes"])
        * len(head.get("lr", [1]))
        * len(head.get("weight_decay", [1]))
        * head.get("epochs", 10)
        / 30e9
    )
    for name, head in config.get("heads", {}).items()
}
HEAD_RUNTIME = {name: 10 + int(seconds / 60) for name, seconds in HEAD_SECONDS.items()}


rule train_head:
    input:
        manifest=manifest_path("train"),
        qc=qc_path("train"),  # QC must pass (or warn) before training; it also checks checksums
        code=code("train_head"),
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
    threads: TRAIN.get("threads", 2)
    resources:
        mem_mb=TRAIN_MEM_MB,
        runtime=lambda wc: HEAD_RUNTIME[wc.head],
    params:
        head=lambda wc: as_json(config["heads"][wc.head]),
        train=as_json(TRAIN),
        num_classes=config["num_classes"],
        seed=config["seed"],
        outputs=lambda wc, output: output_args(output),
    shell:
        "python -m scripts.train_head --manifest {input.manifest:q} {params.outputs}"
        " --name {wildcards.head:q} --head {params.head} --train {params.train}"
        " --num-classes {params.num_classes} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


rule train_baseline:
    input:
        manifest=manifest_path("train"),
        qc=qc_path("train"),  # QC must pass (or warn) before training; it also checks checksums
        code=code("baselines"),
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
    threads: TRAIN.get("threads", 2)
    resources:
        mem_mb=TRAIN_MEM_MB,
        # sklearn fits: ~1e8 row·dim·class per second on 2 cores (measured), at least 10 minutes.
        runtime=10 + int(TRAIN_ROWS * config["dim"] * config["num_classes"] / 1e8 / 60),
    params:
        baseline=lambda wc: as_json(config["baselines"][wc.baseline]),
        train=as_json(TRAIN),
        num_classes=config["num_classes"],
        seed=config["seed"],
        outputs=lambda wc, output: output_args(output),
    shell:
        "python -m scripts.baselines --manifest {input.manifest:q} {params.outputs}"
        " --name {wildcards.baseline:q} --baseline {params.baseline} --train {params.train}"
        " --num-classes {params.num_classes} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


# Head by head, as before the outputs were named (the report's input order).
ALL_TARGETS.extend(
    f
    for head in HEADS
    for f in (
        targets(rules.train_head, head=head) if head in TRAIN_HEADS else targets(rules.train_baseline, baseline=head)
    )
)
