# Evaluate stage: every head and baseline on both test splits (the only rule besides the
# analyses that reads a test split).
import re

if "HEADS" not in globals():
    HEADS = list(config.get("heads", {})) + list(config.get("baselines", {}))

HEAD_PATTERN = "|".join(re.escape(h) for h in HEADS) or "no-heads-configured"
# The class-names file is an input (editing it reruns evaluate); none in the demo.
CLASS_NAMES = [config["evaluate"]["class_names"]] if config["evaluate"].get("class_names") else []

# ImageNet ReaL labels (evaluate.real_labels): re-score the one test set whose paths are ImageNet
# val file names. A shipped file is found beside the Snakefile; a missing one stops before any job.
REAL = config["evaluate"].get("real_labels") or {}
REAL_FILE = REAL.get("file")
REAL_TEST = REAL.get("test", "test1")
if REAL_FILE and not Path(REAL_FILE).exists() and Path(workflow.basedir, REAL_FILE).is_file():
    REAL_FILE = str(Path(workflow.basedir, REAL_FILE))
if REAL_FILE and not Path(REAL_FILE).is_file():
    raise WorkflowError(f"config key evaluate.real_labels.file: file not found: {REAL_FILE}")


rule evaluate:
    input:
        model="results/heads/{head}/model.pt",
        manifest="results/parquet/{test}.manifest.json",
        qc=["results/qc/{test}.json", "results/qc/cross.json"],  # per-split and cross-split QC first
        names=CLASS_NAMES,
        real=lambda wc: [REAL_FILE] if REAL_FILE and wc.test == REAL_TEST else [],  # its own test set only
        code=code("evaluate", "stats", "analysis_common", "heads", "device", "real_labels", "evidence"),
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
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # One row group of features and of float64 log-probabilities (8192 × C) at a time, plus
        # ~100 bytes of prediction columns per row: well under 2 GB for 50k rows × 1000 classes.
        mem_mb=2000,
        runtime=30,
    params:
        outputs=lambda wc, output: output_args(output),
        # Without real_labels: it reaches only its own test set's job (--real-labels), so that
        # switching ReaL on does not rerun the other test set.
        options=as_json({k: v for k, v in config["evaluate"].items() if k != "real_labels"}),
        num_classes=config["num_classes"],
        seed=config["seed"],
        # The temperature was fitted on a train holdout: say so when the backbone saw train.
        backbone_saw_train="true" if config.get("backbone_saw_train") else "false",
        real=lambda wc, input: " ".join(f"--real-labels {shlex.quote(p)}" for p in input.real),
    shell:
        "python -m scripts.evaluate --head {input.model:q} --manifest {input.manifest:q} {params.outputs}"
        " --num-classes {params.num_classes} --options {params.options} --seed {params.seed}"
        " --backbone-saw-train {params.backbone_saw_train} {params.real}"
        " --head-name {wildcards.head:q} --test-name {wildcards.test:q} --threads {threads} > {log:q} 2>&1"


# Head by head and test by test, as before the outputs were named (the report's input order).
ALL_TARGETS.extend(f for head in HEADS for test in TESTS for f in targets(rules.evaluate, head=head, test=test))
