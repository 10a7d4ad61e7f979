# ReaL check (on when evaluate.real_labels.file is set): per head, the ReaL test set's errors split
# into prediction-in-ReaL / no valid label / genuine, the enrichment of confident disagreements for
# label noise, and the per-row table (output `rows`), with which label_noise (analysis.smk) bounds
# its test-2 share when the ReaL test set is test set 1 (REAL_FILE, REAL_TEST, REAL_ROWS, LABEL_NOISE_REAL: common.smk).

if REAL_FILE and HEADS:

    rule real_labels:
        input:
            predictions=f"results/eval/{{head}}/{REAL_TEST}/predictions.parquet",
            real=REAL_FILE,
            names=CLASS_NAMES,
            code=code("analysis.real_labels", "lib.analysis.common", "lib.analysis.evidence", "lib.stats.inference"),
        output:
            **reported(
                analysis_dir("real_labels", "{head}"),
                "real_labels",
                "9. Label noise",
                "{head}",
                table="errors.csv",
                rows=REAL_ROWS,
                summary="summary.json",
                figure="real_errors.png",
            ),
        log:
            "logs/analysis/real_labels.{head}.log",
        benchmark:
            "benchmarks/analysis/real_labels.{head}.tsv"
        conda:
            "../../envs/featgap.yaml"
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            outputs=output_args,
            options=as_json(config["analysis"]["real_labels"]),
            # The same "confident" as the label_noise cause it calibrates.
            threshold=config["analysis"]["label_noise"]["threshold"],
            num_classes=config["num_classes"],
            source=config["data"][REAL_TEST],
            names=lambda wc, input: " ".join(f"--class-names {shlex.quote(p)}" for p in input.names),
            test=REAL_TEST,
            seed=config["seed"],
            entries=config["evaluate"]["real_labels"]["entries"],
        shell:
            "python -m scripts.analysis.real_labels --predictions {input.predictions:q} --real {input.real:q}"
            " {params.outputs} --num-classes {params.num_classes} --threshold {params.threshold}"
            " --source {params.source:q} {params.names} --options {params.options}"
            " --head-name {wildcards.head:q} --test-name {params.test:q} --seed {params.seed}"
            " --real-entries {params.entries} > {log:q} 2>&1"

    ALL_TARGETS.extend(f for head in HEADS for f in targets(rules.real_labels, head=head))
    for_report("real_labels", rules.real_labels.output.summary, head=HEADS)
    benchmarked(rules.real_labels, head=HEADS)
