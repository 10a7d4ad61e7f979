# Gap analyses: each its own cached rule that reads only what it needs (test features only in
# shift, mean_shift, difficulty, misclass and embedding; train features only in train_reference,
# train labels in class_counts) and writes a
# table, summary.json (verdict + numbers + meta) and PNG figures under results/analysis/.
# Each rule gets only its own config subsection, so changing one analysis parameter reruns that
# analysis alone; `analysis.<name>.enabled: false` leaves it out of `all` and so out of the report.
# Adding an analysis: docs/architecture.md.

EMBED_HEAD = ANALYSIS["embedding"]["head"] or (HEADS[0] if HEADS else None)


rule class_counts:
    input:
        train=manifest_path("train"),
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        names=CLASS_NAMES,
        code=code("analysis.class_counts"),
    output:
        analysis_dir("class_counts.csv"),
    log:
        "logs/analysis/class_counts.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        num_classes=config["num_classes"],
        names=config["evaluate"]["class_names"] or "",
    shell:
        "python -m scripts.analysis.class_counts --train {input.train:q} --test1 {input.test1:q} --test2 {input.test2:q}"
        " --num-classes {params.num_classes} --class-names={params.names:q} --out {output:q} > {log:q} 2>&1"


rule gap:
    input:
        metrics1=eval_file("{head}", "test1", "metrics.json"),
        metrics2=eval_file("{head}", "test2", "metrics.json"),
        counts=analysis_dir("class_counts.csv"),
        code=code("analysis.gap"),
    output:
        **reported(
            analysis_dir("gap", "{head}"),
            "gap",
            "2. Per-class drop",
            "{head}",
            table="per_class.csv",
            summary="summary.json",
            distribution_figure="drop_distribution.png",
            top_figure="top_drops.png",
        ),
    log:
        "logs/analysis/gap.{head}.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        outputs=output_args,
        options=analysis_options("gap"),
        seed=config["seed"],
    shell:
        "python -m scripts.analysis.gap --metrics1 {input.metrics1:q} --metrics2 {input.metrics2:q}"
        " --class-counts {input.counts:q} {params.outputs} --options {params.options}"
        " --seed {params.seed} --head-name {wildcards.head:q} > {log:q} 2>&1"


if analysis_on("gap"):
    ALL_TARGETS.extend(targets(rules.gap, head=HEADS))
    for_report("gap", rules.gap.output.summary, head=HEADS)
    for_pictures("classes", rules.gap.output.table)


rule shift:
    input:
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        code=code("analysis.shift"),
    output:
        **reported(
            analysis_dir("shift"),
            "shift",
            "3. Feature shift",
            "test sets",
            table="features.csv",
            summary="summary.json",
            volcano_figure="volcano.png",
            top_features_figure="top_features.png",
            roc_figure="domain_roc.png",
        ),
    log:
        "logs/analysis/shift.log",
    benchmark:
        "benchmarks/analysis/shift.tsv"
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # Both test splits' features (60k × 1024 float32 ≈ 250 MB) + float64 blocks for KS and
        # the domain classifier's sample; measured 0.93 GB, 49 s at 50k/10k × 1024 (2 cores).
        mem_mb=2500,
        runtime=30,
    params:
        outputs=output_args,
        options=analysis_options("shift"),
        seed=config["seed"],
    shell:
        "python -m scripts.analysis.shift --test1 {input.test1:q} --test2 {input.test2:q}"
        " {params.outputs} --options {params.options} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


if analysis_on("shift"):
    ALL_TARGETS.extend(targets(rules.shift))
    for_report("shift", rules.shift.output.summary)
benchmarked(rules.shift, on=analysis_on("shift"))


rule mean_shift:
    input:
        model=head_file("{head}", "model.pt"),
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        code=code("analysis.mean_shift"),
    output:
        **reported(
            analysis_dir("mean_shift", "{head}"),
            "mean_shift",
            "3. Feature shift",
            "adaptation {head}",
            table="adaptation.csv",
            summary="summary.json",
            figure="adaptation.png",
        ),
    log:
        "logs/analysis/mean_shift.{head}.log",
    benchmark:
        "benchmarks/analysis/mean_shift.{head}.tsv"
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # Both test splits' features + one batch of logits; measured 1.3 GB at 50k/10k × 1024, 1000 classes.
        mem_mb=2500,
        runtime=20,
    params:
        outputs=output_args,
        options=analysis_options("mean_shift"),
        seed=config["seed"],
    shell:
        "python -m scripts.analysis.mean_shift --model {input.model:q} --head-name {wildcards.head:q}"
        " --test1 {input.test1:q} --test2 {input.test2:q} {params.outputs} --options {params.options}"
        " --seed {params.seed} --threads {threads} > {log:q} 2>&1"


if analysis_on("mean_shift"):
    ALL_TARGETS.extend(targets(rules.mean_shift, head=HEADS))
    for_report("mean_shift", rules.mean_shift.output.summary, head=HEADS)
benchmarked(rules.mean_shift, on=analysis_on("mean_shift"), head=HEADS)


rule imbalance:
    input:
        counts=analysis_dir("class_counts.csv"),
        metrics1=eval_file("{head}", "test1", "metrics.json"),
        metrics2=eval_file("{head}", "test2", "metrics.json"),
        code=code("analysis.imbalance"),
    output:
        **reported(
            analysis_dir("imbalance", "{head}"),
            "imbalance",
            "4. Class imbalance",
            "{head}",
            table="per_class.csv",
            summary="summary.json",
            figure="scatter.png",
        ),
    log:
        "logs/analysis/imbalance.{head}.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        outputs=output_args,
        options=analysis_options("imbalance"),
        seed=config["seed"],
    shell:
        "python -m scripts.analysis.imbalance --class-counts {input.counts:q} --metrics1 {input.metrics1:q}"
        " --metrics2 {input.metrics2:q} {params.outputs} --options {params.options}"
        " --seed {params.seed} --head-name {wildcards.head:q} > {log:q} 2>&1"


if analysis_on("imbalance"):
    ALL_TARGETS.extend(targets(rules.imbalance, head=HEADS))
    for_report("imbalance", rules.imbalance.output.summary, head=HEADS)


rule overfit:
    input:
        selection=head_file("{head}", "selection.json"),
        history=head_file("{head}", "history.csv"),
        metrics1=eval_file("{head}", "test1", "metrics.json"),
        metrics2=eval_file("{head}", "test2", "metrics.json"),
        code=code("analysis.overfit"),
    output:
        **reported(
            analysis_dir("overfit", "{head}"),
            "overfit",
            "5. Overfitting",
            "{head}",
            table="accuracy.csv",
            grid_table="grid.csv",
            summary="summary.json",
            accuracy_figure="accuracy.png",
            grid_figure="grid.png",
            curves_figure="curves.png",
        ),
    log:
        "logs/analysis/overfit.{head}.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        outputs=output_args,
        options=analysis_options("overfit"),
        backbone_saw_train=BACKBONE_SAW_TRAIN,
    shell:
        "python -m scripts.analysis.overfit --selection {input.selection:q} --history {input.history:q}"
        " --metrics1 {input.metrics1:q} --metrics2 {input.metrics2:q} {params.outputs}"
        " --options {params.options} --backbone-saw-train {params.backbone_saw_train}"
        " --head-name {wildcards.head:q} > {log:q} 2>&1"


if analysis_on("overfit"):
    ALL_TARGETS.extend(targets(rules.overfit, head=HEADS))
    for_report("overfit", rules.overfit.output.summary, head=HEADS)


rule misclass:
    input:
        predictions=eval_file("{head}", "{test}", "predictions.parquet"),
        manifest=manifest_path("{test}"),
        code=code("analysis.misclass"),
    output:
        **reported(
            analysis_dir("misclass", "{head}", "{test}"),
            "misclass",
            "6. Misclassified samples",
            "{head} {test}",
            table="features.csv",
            summary="summary.json",
            figure="clusters.png",
        ),
    log:
        "logs/analysis/misclass.{head}.{test}.log",
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        outputs=output_args,
        options=analysis_options("misclass"),
        seed=config["seed"],
    shell:
        "python -m scripts.analysis.misclass --predictions {input.predictions:q}"
        " --manifest {input.manifest:q} {params.outputs} --options {params.options} --seed {params.seed}"
        " --head-name {wildcards.head:q} --test-name {wildcards.test:q} --threads {threads} > {log:q} 2>&1"


if analysis_on("misclass"):
    ALL_TARGETS.extend(targets(rules.misclass, head=HEADS, test=TESTS))
    for_report("misclass", rules.misclass.output.summary, head=HEADS, test=TESTS)


# What the gap question needs from misclass: does the within-class signature of a misclassified
# image differ between test set 1 and test set 2? (reads the two features.csv tables only)
rule misclass_compare:
    input:
        features1=analysis_dir("misclass", "{head}", "test1", "features.csv"),
        features2=analysis_dir("misclass", "{head}", "test2", "features.csv"),
        code=code("analysis.misclass_compare"),
    output:
        **reported(
            analysis_dir("misclass_compare", "{head}"),
            "misclass_compare",
            "6. Misclassified samples",
            "{head} test1 vs test2",
            table="compare.csv",
            summary="summary.json",
            figure="compare.png",
        ),
    log:
        "logs/analysis/misclass_compare.{head}.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        outputs=output_args,
        options=analysis_options("misclass_compare"),
    shell:
        "python -m scripts.analysis.misclass_compare --features1 {input.features1:q} --features2 {input.features2:q}"
        " {params.outputs} --options {params.options} --head-name {wildcards.head:q} > {log:q} 2>&1"


if analysis_on("misclass") and analysis_on("misclass_compare"):
    ALL_TARGETS.extend(targets(rules.misclass_compare, head=HEADS))
    for_report("misclass_compare", rules.misclass_compare.output.summary, head=HEADS)


if EMBED_HEAD is not None and analysis_on("embedding"):

    rule embedding:
        input:
            test1=manifest_path("test1"),
            test2=manifest_path("test2"),
            predictions1=eval_file(EMBED_HEAD, "test1", "predictions.parquet"),
            predictions2=eval_file(EMBED_HEAD, "test2", "predictions.parquet"),
            code=code("analysis.embedding"),
        output:
            **reported(
                analysis_dir("embedding"),
                "embedding",
                "7. Embedding",
                table="coords.csv",
                summary="summary.json",
                pca_figure="pca.png",
                tsne_figure="tsne.png",
            ),
        log:
            "logs/analysis/embedding.log",
        benchmark:
            "benchmarks/analysis/embedding.tsv"
        conda:
            "../../envs/featgap.yaml"
        threads: 2
        resources:
            mem_mb=3000,
            runtime=30,
        params:
            outputs=output_args,
            options=analysis_options("embedding"),
            seed=config["seed"],
            head=EMBED_HEAD,
        shell:
            "python -m scripts.analysis.embedding --test1 {input.test1:q} --test2 {input.test2:q}"
            " --predictions1 {input.predictions1:q} --predictions2 {input.predictions2:q} {params.outputs}"
            " --options {params.options} --seed {params.seed} --head-name {params.head:q} --threads {threads}"
            " > {log:q} 2>&1"

    ALL_TARGETS.extend(rules.embedding.output)
    for_report("embedding", rules.embedding.output.summary)
    benchmarked(rules.embedding)


# Train class means and global mean/std in one streaming pass (a few MB): what difficulty needs
# from train, without ever holding the train matrix.
rule train_reference:
    input:
        train=manifest_path("train"),
        code=code("analysis.train_reference"),
    output:
        analysis_dir("train_reference.npz"),
    log:
        "logs/analysis/train_reference.log",
    benchmark:
        "benchmarks/analysis/train_reference.tsv"
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        num_classes=config["num_classes"],
    shell:
        "python -m scripts.analysis.train_reference --train {input.train:q} --num-classes {params.num_classes}"
        " --out {output:q} > {log:q} 2>&1"


rule difficulty:
    input:
        reference=analysis_dir("train_reference.npz"),
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        predictions1=eval_file("{head}", "test1", "predictions.parquet"),
        predictions2=eval_file("{head}", "test2", "predictions.parquet"),
        code=code("analysis.difficulty"),
    output:
        **reported(
            analysis_dir("difficulty", "{head}"),
            "difficulty",
            "8. Difficulty",
            "{head}",
            table="typicality.csv",
            summary="summary.json",
            figure="typicality.png",
        ),
    log:
        "logs/analysis/difficulty.{head}.log",
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        mem_mb=2500,
        runtime=20,
    params:
        outputs=output_args,
        options=analysis_options("difficulty"),
        seed=config["seed"],
    shell:
        "python -m scripts.analysis.difficulty --reference {input.reference:q}"
        " --test1 {input.test1:q} --test2 {input.test2:q} --predictions1 {input.predictions1:q}"
        " --predictions2 {input.predictions2:q} {params.outputs} --options {params.options}"
        " --seed {params.seed} --head-name {wildcards.head:q} --threads {threads} > {log:q} 2>&1"


if analysis_on("difficulty"):
    ALL_TARGETS.extend(targets(rules.difficulty, head=HEADS))
    for_report("difficulty", rules.difficulty.output.summary, head=HEADS)
# difficulty's and decomposition's input only
benchmarked(rules.train_reference, on=analysis_on("difficulty") or analysis_on("decomposition"))


# label_noise reads only the two predictions tables (a re-scoring with other labels can feed it).
rule label_noise:
    input:
        predictions1=eval_file("{head}", "test1", "predictions.parquet"),
        predictions2=eval_file("{head}", "test2", "predictions.parquet"),
        real=LABEL_NOISE_REAL,  # ReaL check of test set 1 (real_labels.smk), when configured (common.smk)
        code=code("analysis.label_noise"),
    output:
        **reported(
            analysis_dir("label_noise", "{head}"),
            "label_noise",
            "9. Label noise",
            "{head}",
            table="disagreements.csv",
            summary="summary.json",
            figure="confidence.png",
        ),
    log:
        "logs/analysis/label_noise.{head}.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        outputs=output_args,
        options=analysis_options("label_noise"),
        seed=config["seed"],
        real=lambda wc, input: " ".join(f"--real-rows {shlex.quote(p)}" for p in input.real),
    shell:
        "python -m scripts.analysis.label_noise --predictions1 {input.predictions1:q} --predictions2 {input.predictions2:q}"
        " {params.outputs} --options {params.options} --seed {params.seed}"
        " --head-name {wildcards.head:q} {params.real} > {log:q} 2>&1"


if analysis_on("label_noise"):
    ALL_TARGETS.extend(targets(rules.label_noise, head=HEADS))
    for_report("label_noise", rules.label_noise.output.summary, head=HEADS)


# Accuracy on the line: only when a reference table is configured (config/eva02.yaml: timm's results).
REFERENCE_LINE = ANALYSIS["reference_line"]
LINE_ON = bool(
    REFERENCE_LINE["test1_table"] and REFERENCE_LINE["test2_table"] and HEADS and analysis_on("reference_line")
)
if LINE_ON:

    rule reference_line:
        input:
            test1_table=REFERENCE_LINE["test1_table"],
            test2_table=REFERENCE_LINE["test2_table"],
            metrics1=expand(eval_file("{head}", "test1", "metrics.json"), head=HEADS),
            metrics2=expand(eval_file("{head}", "test2", "metrics.json"), head=HEADS),
            code=code("analysis.reference_line"),
        output:
            **reported(
                analysis_dir("reference_line"),
                "reference_line",
                "1. Accuracy on the line",
                table="line.csv",
                summary="summary.json",
                figure="line.png",
            ),
        log:
            "logs/analysis/reference_line.log",
        conda:
            "../../envs/featgap.yaml"
        resources:
            mem_mb=500,
            runtime=5,
        params:
            outputs=output_args,
            options=as_json(
                {k: v for k, v in REFERENCE_LINE.items() if k not in ("enabled", "test1_table", "test2_table")}
            ),
            heads=lambda wc, input: " ".join(
                f"--head {shlex.quote(h)} {shlex.quote(a)} {shlex.quote(b)}"
                for h, a, b in zip(HEADS, input.metrics1, input.metrics2)
            ),
        shell:
            "python -m scripts.analysis.reference_line --test1-table {input.test1_table:q} --test2-table {input.test2_table:q}"
            " --options {params.options} {params.heads} {params.outputs} > {log:q} 2>&1"

    ALL_TARGETS.extend(rules.reference_line.output)
    for_report("reference_line", rules.reference_line.output.summary)


# The decomposition reads the line's summary only to mark the expected gap on its waterfall.
LINE_SUMMARY = [rules.reference_line.output.summary] if LINE_ON else []


rule decomposition:
    input:
        model=head_file("{head}", "model.pt"),
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        train_reference=analysis_dir("train_reference.npz"),
        reference_line=LINE_SUMMARY,
        code=code("analysis.decomposition"),
    output:
        **reported(
            analysis_dir("decomposition", "{head}"),
            "decomposition",
            "0. Decomposition of the gap",
            "{head}",
            table="terms.csv",
            summary="summary.json",
            figure="waterfall.png",
            label_issues="label_issues.csv",
        ),
    log:
        "logs/analysis/decomposition.{head}.log",
    benchmark:
        "benchmarks/analysis/decomposition.{head}.tsv"
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # Both test splits (50k + 10k rows x 1024 float32: 250 MB), float64 copies of test set 2 and
        # its reverted versions (~0.1 GB each), one D x D pooled scatter per set; see docs/statistics.md.
        mem_mb=4000,
        runtime=60,
    params:
        outputs=output_args,
        options=analysis_options("decomposition"),
        seed=config["seed"],
        line=lambda wc, input: " ".join(f"--reference-line {shlex.quote(p)}" for p in input.reference_line),
    shell:
        "python -m scripts.analysis.decomposition --model {input.model:q} --head-name {wildcards.head:q}"
        " --test1 {input.test1:q} --test2 {input.test2:q} --train-reference {input.train_reference:q}"
        " {params.line} {params.outputs} --options {params.options} --seed {params.seed}"
        " --threads {threads} > {log:q} 2>&1"


if analysis_on("decomposition"):
    ALL_TARGETS.extend(targets(rules.decomposition, head=HEADS))
    for_report("decomposition", rules.decomposition.output.summary, head=HEADS)
    # The report's "most likely mislabelled" pictures: the test-2 images the answer's label_noise
    # term counts as most likely mislabelled (path, label, suggested class).
    for_pictures("mislabelled", rules.decomposition.output.label_issues)
elif analysis_on("label_noise"):
    for_pictures("mislabelled", rules.label_noise.output.table)  # its most confident disagreements
benchmarked(rules.decomposition, on=analysis_on("decomposition"), head=HEADS)

ALL_TARGETS.extend(rules.class_counts.output)
