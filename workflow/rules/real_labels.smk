# ReaL check (on when evaluate.real_labels.file is set): per head, the ReaL test set's errors split
# into prediction-in-ReaL / no valid label / genuine, the enrichment of confident disagreements for
# label noise, and rows.parquet, with which label_noise (analysis.smk) bounds its test-2 share when
# the ReaL test set is test set 1 (REAL_FILE, REAL_TEST, LABEL_NOISE_REAL: common.smk).
REAL_LABELS_FILES = ["errors.csv", "rows.parquet", "summary.json", "real_errors.png"]

if REAL_FILE and HEADS:

    rule real_labels:
        input:
            predictions=f"results/eval/{{head}}/{REAL_TEST}/predictions.parquet",
            real=REAL_FILE,
            names=CLASS_NAMES,
            code=code("real_labels", "analysis_common", "evidence", "stats"),
        output:
            [
                (
                    report(f, caption="../report/real_labels.rst", category="9. Label noise", subcategory="{head}")
                    if f.endswith(".png")
                    else f
                )
                for f in expand("results/analysis/real_labels/{{head}}/{file}", file=REAL_LABELS_FILES)
            ],
        log:
            "logs/analysis/real_labels.{head}.log",
        benchmark:
            "benchmarks/analysis/real_labels.{head}.tsv"
        wildcard_constraints:
            head=HEAD_PATTERN,
        conda:
            "../../envs/featgap.yaml"
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            out_dir=lambda wc, output: Path(output[0]).parent,
            options=as_json(config["analysis"]["real_labels"]),
            # The same "confident" as the label_noise cause it calibrates.
            threshold=config["analysis"]["label_noise"]["threshold"],
            num_classes=config["num_classes"],
            source=config["data"][REAL_TEST],
            names=lambda wc, input: " ".join(f"--class-names {shlex.quote(p)}" for p in input.names),
            test=REAL_TEST,
            seed=config["seed"],
        shell:
            "python -m scripts.real_labels --predictions {input.predictions:q} --real {input.real:q}"
            " --out-dir {params.out_dir:q} --num-classes {params.num_classes} --threshold {params.threshold}"
            " --source {params.source:q} {params.names} --options {params.options}"
            " --head-name {wildcards.head:q} --test-name {params.test:q} --seed {params.seed} > {log:q} 2>&1"

    ALL_TARGETS.extend(expand("results/analysis/real_labels/{head}/{file}", head=HEADS, file=REAL_LABELS_FILES))
