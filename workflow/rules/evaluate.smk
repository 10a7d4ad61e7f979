# Evaluate stage: every head and baseline on both test splits (the only rule besides the
# analyses that reads a test split). With evaluate.real_labels.file set, the ReaL test set's job
# also re-scores with ReaL labels (REAL_FILE, REAL_TEST: common.smk).


rule evaluate:
    input:
        model="results/heads/{head}/model.pt",
        manifest="results/parquet/{test}.manifest.json",
        qc=["results/qc/{test}.json", "results/qc/cross.json"],  # per-split and cross-split QC first
        names=CLASS_NAMES,
        real=lambda wc: [REAL_FILE] if REAL_FILE and wc.test == REAL_TEST else [],  # its own test set only
        code=code(
            "evaluate.evaluate",
            "lib.stats.inference",
            "lib.analysis.common",
            "lib.heads",
            "lib.device",
            "lib.real_scoring",
            "lib.analysis.evidence",
        ),
    output:
        predictions="results/eval/{head}/{test}/predictions.parquet",
        metrics="results/eval/{head}/{test}/metrics.json",
        confusions="results/eval/{head}/{test}/confusions.csv",
        plot=report(
            "results/eval/{head}/{test}/confused_pairs.png",
            caption="../report/evaluate.rst",
            category="1. Evaluation",
            subcategory="{head}",
            labels={"head": "{head}", "test": "{test}"},
        ),
    log:
        "logs/evaluate/{head}.{test}.log",
    benchmark:
        "benchmarks/evaluate/{head}.{test}.tsv"
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # One row group of features and of float64 log-probabilities (8192 × C) at a time, plus
        # ~100 bytes of prediction columns per row: well under 2 GB for 50k rows × 1000 classes.
        mem_mb=2000,
        runtime=30,
    params:
        outputs=output_args,
        # Without real_labels: it reaches only its own test set's job (--real-labels), so that
        # switching ReaL on does not rerun the other test set.
        options=as_json({k: v for k, v in config["evaluate"].items() if k != "real_labels"}),
        num_classes=config["num_classes"],
        seed=config["seed"],
        # The temperature was fitted on a train holdout: say so when the backbone saw train.
        backbone_saw_train=BACKBONE_SAW_TRAIN,
        real=lambda wc, input: " ".join(
            f"--real-labels {shlex.quote(p)} --real-entries {config['evaluate']['real_labels']['entries']}"
            for p in input.real
        ),
    shell:
        "python -m scripts.evaluate.evaluate --model {input.model:q} --manifest {input.manifest:q} {params.outputs}"
        " --num-classes {params.num_classes} --options {params.options} --seed {params.seed}"
        " --backbone-saw-train {params.backbone_saw_train} {params.real}"
        " --head-name {wildcards.head:q} --test-name {wildcards.test:q} --threads {threads} > {log:q} 2>&1"


ALL_TARGETS.extend(f for head in HEADS for test in TESTS for f in targets(rules.evaluate, head=head, test=test))
for_report("metrics", rules.evaluate.output.metrics, head=HEADS, test=TESTS)
benchmarked(rules.evaluate, head=HEADS, test=TESTS)
