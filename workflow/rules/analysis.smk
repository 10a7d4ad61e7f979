# Gap analyses: each its own cached rule that reads only what it needs (test features only in
# shift, shift_adapt, misclass and embedding; train LABELS only in class_counts) and writes a
# table, summary.json (verdict + numbers + meta) and PNG figures under results/analysis/.
# Each rule gets only its own config subsection, so changing one analysis parameter reruns that
# analysis alone.

ANALYSIS = config.get("analysis", {})
EMBED_HEAD = ANALYSIS.get("embedding", {}).get("head") or (HEADS[0] if HEADS else None)

GAP_FILES = ["per_class.csv", "summary.json", "drop_distribution.png", "top_drops.png"]
SHIFT_FILES = ["features.csv", "summary.json", "volcano.png", "top_features.png", "domain_roc.png"]
ADAPT_FILES = ["adaptation.csv", "summary.json", "adaptation.png"]
IMBALANCE_FILES = ["per_class.csv", "summary.json", "scatter.png"]
OVERFIT_FILES = ["accuracy.csv", "grid.csv", "summary.json", "accuracy.png", "grid.png", "curves.png"]
MISCLASS_FILES = ["features.csv", "summary.json", "clusters.png"]
MISCLASS_COMPARE_FILES = ["compare.csv", "summary.json", "compare.png"]
# The backbone was trained on the train split (EVA-02 …ft_in22k_in1k on ImageNet-1k train): the
# analyses that report holdout numbers state it next to them.
BACKBONE_SAW_TRAIN = "true" if config.get("backbone_saw_train") else "false"
EMBEDDING_FILES = ["coords.csv", "summary.json", "pca.png", "tsne.png"]
DIFFICULTY_FILES = ["typicality.csv", "summary.json", "typicality.png"]
LABEL_NOISE_FILES = ["disagreements.csv", "summary.json", "confidence.png"]


rule class_counts:
    input:
        train="results/parquet/train.manifest.json",
        test1="results/parquet/test1.manifest.json",
        test2="results/parquet/test2.manifest.json",
        names=CLASS_NAMES,
        code=code("analysis_common"),
    output:
        "results/analysis/class_counts.csv",
    log:
        "logs/analysis/class_counts.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        num_classes=config["num_classes"],
        names=config["evaluate"].get("class_names") or "",
    shell:
        "python -m scripts.analysis_common --train {input.train:q} --test1 {input.test1:q} --test2 {input.test2:q}"
        " --num-classes {params.num_classes} --class-names={params.names:q} --out {output:q} > {log:q} 2>&1"


rule gap:
    input:
        metrics1="results/eval/{head}/test1/metrics.json",
        metrics2="results/eval/{head}/test2/metrics.json",
        counts="results/analysis/class_counts.csv",
        code=code("gap", "stats", "stats_classes", "analysis_common", "evidence"),
    output:
        [
            (
                report(f, caption="../report/gap.rst", category="2. Per-class drop", subcategory="{head}")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/gap/{{head}}/{file}", file=GAP_FILES)
        ],
    log:
        "logs/analysis/gap.{head}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("gap", {})),
        seed=config["seed"],
    shell:
        "python -m scripts.gap --metrics1 {input.metrics1:q} --metrics2 {input.metrics2:q}"
        " --class-counts {input.counts:q} --out-dir {params.out_dir:q} --options {params.options}"
        " --seed {params.seed} --head-name {wildcards.head:q} > {log:q} 2>&1"


rule shift:
    input:
        test1="results/parquet/test1.manifest.json",
        test2="results/parquet/test2.manifest.json",
        code=code("shift", "stats", "analysis_common"),
    output:
        [
            (
                report(f, caption="../report/shift.rst", category="3. Feature shift", subcategory="test sets")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/shift/{file}", file=SHIFT_FILES)
        ],
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
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("shift", {})),
        seed=config["seed"],
    shell:
        "OMP_NUM_THREADS={threads} python -m scripts.shift features --test1 {input.test1:q} --test2 {input.test2:q}"
        " --out-dir {params.out_dir:q} --options {params.options} --seed {params.seed} > {log:q} 2>&1"


rule shift_adapt:
    input:
        model="results/heads/{head}/model.pt",
        test1="results/parquet/test1.manifest.json",
        test2="results/parquet/test2.manifest.json",
        code=code("shift", "stats", "analysis_common", "heads", "evidence"),
    output:
        [
            (
                report(f, caption="../report/adapt.rst", category="3. Feature shift", subcategory="adaptation {head}")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/shift/adapt/{{head}}/{file}", file=ADAPT_FILES)
        ],
    log:
        "logs/analysis/shift_adapt.{head}.log",
    benchmark:
        "benchmarks/analysis/shift_adapt.{head}.tsv"
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # Both test splits' features + one batch of logits; measured 1.3 GB at 50k/10k × 1024, 1000 classes.
        mem_mb=2500,
        runtime=20,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("shift_adapt", {})),
        seed=config["seed"],
    shell:
        "OMP_NUM_THREADS={threads} python -m scripts.shift adapt --head {input.model:q} --head-name {wildcards.head:q}"
        " --test1 {input.test1:q} --test2 {input.test2:q} --out-dir {params.out_dir:q} --options {params.options}"
        " --seed {params.seed} > {log:q} 2>&1"


rule imbalance:
    input:
        counts="results/analysis/class_counts.csv",
        metrics1="results/eval/{head}/test1/metrics.json",
        metrics2="results/eval/{head}/test2/metrics.json",
        code=code("imbalance", "stats", "analysis_common", "evidence"),
    output:
        [
            (
                report(f, caption="../report/imbalance.rst", category="4. Class imbalance", subcategory="{head}")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/imbalance/{{head}}/{file}", file=IMBALANCE_FILES)
        ],
    log:
        "logs/analysis/imbalance.{head}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("imbalance", {})),
        seed=config["seed"],
    shell:
        "python -m scripts.imbalance --class-counts {input.counts:q} --metrics1 {input.metrics1:q}"
        " --metrics2 {input.metrics2:q} --out-dir {params.out_dir:q} --options {params.options}"
        " --seed {params.seed} --head-name {wildcards.head:q} > {log:q} 2>&1"


rule overfit:
    input:
        selection="results/heads/{head}/selection.json",
        history="results/heads/{head}/history.csv",
        metrics1="results/eval/{head}/test1/metrics.json",
        metrics2="results/eval/{head}/test2/metrics.json",
        code=code("overfit", "analysis_common", "evidence"),
    output:
        [
            (
                report(f, caption="../report/overfit.rst", category="5. Overfitting", subcategory="{head}")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/overfit/{{head}}/{file}", file=OVERFIT_FILES)
        ],
    log:
        "logs/analysis/overfit.{head}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("overfit", {})),
        backbone_saw_train=BACKBONE_SAW_TRAIN,
    shell:
        "python -m scripts.overfit --selection {input.selection:q} --history {input.history:q}"
        " --metrics1 {input.metrics1:q} --metrics2 {input.metrics2:q} --out-dir {params.out_dir:q}"
        " --options {params.options} --backbone-saw-train {params.backbone_saw_train}"
        " --head-name {wildcards.head:q} > {log:q} 2>&1"


rule misclass:
    input:
        predictions="results/eval/{head}/{test}/predictions.parquet",
        manifest="results/parquet/{test}.manifest.json",
        code=code("misclass", "stats", "stats_classes", "analysis_common"),
    output:
        [
            (
                report(
                    f,
                    caption="../report/misclass.rst",
                    category="6. Misclassified samples",
                    subcategory="{head} {test}",
                )
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/misclass/{{head}}/{{test}}/{file}", file=MISCLASS_FILES)
        ],
    log:
        "logs/analysis/misclass.{head}.{test}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
        test="|".join(TESTS),
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("misclass", {})),
        seed=config["seed"],
    shell:
        "OMP_NUM_THREADS={threads} python -m scripts.misclass --predictions {input.predictions:q}"
        " --manifest {input.manifest:q} --out-dir {params.out_dir:q} --options {params.options} --seed {params.seed}"
        " --head-name {wildcards.head:q} --test-name {wildcards.test:q} > {log:q} 2>&1"


# What the gap question needs from misclass: does the within-class signature of a misclassified
# image differ between test set 1 and test set 2? (reads the two features.csv tables only)
rule misclass_compare:
    input:
        features1="results/analysis/misclass/{head}/test1/features.csv",
        features2="results/analysis/misclass/{head}/test2/features.csv",
        code=code("misclass", "stats", "stats_classes", "analysis_common"),
    output:
        [
            (
                report(
                    f,
                    caption="../report/misclass_compare.rst",
                    category="6. Misclassified samples",
                    subcategory="{head} test1 vs test2",
                )
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/misclass_compare/{{head}}/{file}", file=MISCLASS_COMPARE_FILES)
        ],
    log:
        "logs/analysis/misclass_compare.{head}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("misclass", {})),
    shell:
        "python -m scripts.misclass compare --features1 {input.features1:q} --features2 {input.features2:q}"
        " --out-dir {params.out_dir:q} --options {params.options} --head-name {wildcards.head:q} > {log:q} 2>&1"


if EMBED_HEAD is not None:

    rule embedding:
        input:
            test1="results/parquet/test1.manifest.json",
            test2="results/parquet/test2.manifest.json",
            predictions1=f"results/eval/{EMBED_HEAD}/test1/predictions.parquet",
            predictions2=f"results/eval/{EMBED_HEAD}/test2/predictions.parquet",
            code=code("embedding", "shift", "stats", "analysis_common"),
        output:
            [
                report(f, caption="../report/embedding.rst", category="7. Embedding") if f.endswith(".png") else f
                for f in expand("results/analysis/embedding/{file}", file=EMBEDDING_FILES)
            ],
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
            out_dir=lambda wc, output: Path(output[0]).parent,
            options=as_json(ANALYSIS.get("embedding", {})),
            seed=config["seed"],
            head=EMBED_HEAD,
        shell:
            "OMP_NUM_THREADS={threads} python -m scripts.embedding --test1 {input.test1:q} --test2 {input.test2:q}"
            " --predictions1 {input.predictions1:q} --predictions2 {input.predictions2:q} --out-dir {params.out_dir:q}"
            " --options {params.options} --seed {params.seed} --head-name {params.head:q} --threads {threads}"
            " > {log:q} 2>&1"

    ALL_TARGETS.extend(expand("results/analysis/embedding/{file}", file=EMBEDDING_FILES))


# Train class means and global mean/std in one streaming pass (a few MB): what difficulty needs
# from train, without ever holding the train matrix.
rule train_reference:
    input:
        train="results/parquet/train.manifest.json",
        code=code("difficulty", "analysis_common", "evidence"),
    output:
        "results/analysis/train_reference.npz",
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
        "python -m scripts.difficulty reference --train {input.train:q} --num-classes {params.num_classes}"
        " --out {output:q} > {log:q} 2>&1"


rule difficulty:
    input:
        reference="results/analysis/train_reference.npz",
        test1="results/parquet/test1.manifest.json",
        test2="results/parquet/test2.manifest.json",
        predictions1="results/eval/{head}/test1/predictions.parquet",
        predictions2="results/eval/{head}/test2/predictions.parquet",
        code=code("difficulty", "analysis_common", "evidence", "stats"),
    output:
        [
            (
                report(f, caption="../report/difficulty.rst", category="8. Difficulty", subcategory="{head}")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/difficulty/{{head}}/{file}", file=DIFFICULTY_FILES)
        ],
    log:
        "logs/analysis/difficulty.{head}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        mem_mb=2500,
        runtime=20,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("difficulty", {})),
        seed=config["seed"],
    shell:
        "OMP_NUM_THREADS={threads} python -m scripts.difficulty share --reference {input.reference:q}"
        " --test1 {input.test1:q} --test2 {input.test2:q} --predictions1 {input.predictions1:q}"
        " --predictions2 {input.predictions2:q} --out-dir {params.out_dir:q} --options {params.options}"
        " --seed {params.seed} --head-name {wildcards.head:q} > {log:q} 2>&1"


# label_noise reads only the two predictions tables (a re-scoring with other labels can feed it).
rule label_noise:
    input:
        predictions1="results/eval/{head}/test1/predictions.parquet",
        predictions2="results/eval/{head}/test2/predictions.parquet",
        real=LABEL_NOISE_REAL,  # ReaL check of test set 1 (real_labels.smk), when configured
        code=code("label_noise", "analysis_common", "evidence", "stats"),
    output:
        [
            (
                report(f, caption="../report/label_noise.rst", category="9. Label noise", subcategory="{head}")
                if f.endswith(".png")
                else f
            )
            for f in expand("results/analysis/label_noise/{{head}}/{file}", file=LABEL_NOISE_FILES)
        ],
    log:
        "logs/analysis/label_noise.{head}.log",
    wildcard_constraints:
        head=HEAD_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda wc, output: Path(output[0]).parent,
        options=as_json(ANALYSIS.get("label_noise", {})),
        seed=config["seed"],
        real=lambda wc, input: " ".join(f"--real-rows {shlex.quote(p)}" for p in input.real),
    shell:
        "python -m scripts.label_noise --predictions1 {input.predictions1:q} --predictions2 {input.predictions2:q}"
        " --out-dir {params.out_dir:q} --options {params.options} --seed {params.seed}"
        " --head-name {wildcards.head:q} {params.real} > {log:q} 2>&1"


# Accuracy on the line: only when a reference table is configured (config/eva02.yaml: timm's results).
REFERENCE_LINE = ANALYSIS.get("reference_line") or {}
if REFERENCE_LINE.get("test1_table") and REFERENCE_LINE.get("test2_table") and HEADS:

    rule reference_line:
        input:
            test1_table=REFERENCE_LINE["test1_table"],
            test2_table=REFERENCE_LINE["test2_table"],
            metrics1=expand("results/eval/{head}/test1/metrics.json", head=HEADS),
            metrics2=expand("results/eval/{head}/test2/metrics.json", head=HEADS),
            code=code("reference_line", "analysis_common"),
        output:
            [
                (
                    report(f, caption="../report/reference_line.rst", category="1. Accuracy on the line")
                    if f.endswith(".png")
                    else f
                )
                for f in expand(
                    "results/analysis/reference_line/{file}", file=["line.csv", "summary.json", "line.png"]
                )
            ],
        log:
            "logs/analysis/reference_line.log",
        conda:
            "../../envs/featgap.yaml"
        resources:
            mem_mb=500,
            runtime=5,
        params:
            out_dir=lambda wc, output: Path(output[0]).parent,
            min_top1=REFERENCE_LINE.get("min_test1_top1", 80.0),
            heads=lambda wc, input: " ".join(
                f"--head {shlex.quote(h)} {shlex.quote(a)} {shlex.quote(b)}"
                for h, a, b in zip(HEADS, input.metrics1, input.metrics2)
            ),
        shell:
            "python -m scripts.reference_line --test1-table {input.test1_table:q} --test2-table {input.test2_table:q}"
            " --min-test1-top1 {params.min_top1} {params.heads} --out-dir {params.out_dir:q} > {log:q} 2>&1"

    ALL_TARGETS.extend(expand("results/analysis/reference_line/{file}", file=["line.csv", "summary.json", "line.png"]))


ALL_TARGETS.extend(
    ["results/analysis/class_counts.csv"]
    + expand("results/analysis/shift/{file}", file=SHIFT_FILES)
    + expand("results/analysis/shift/adapt/{head}/{file}", head=HEADS, file=ADAPT_FILES)
    + expand("results/analysis/gap/{head}/{file}", head=HEADS, file=GAP_FILES)
    + expand("results/analysis/imbalance/{head}/{file}", head=HEADS, file=IMBALANCE_FILES)
    + expand("results/analysis/overfit/{head}/{file}", head=HEADS, file=OVERFIT_FILES)
    + expand("results/analysis/misclass/{head}/{test}/{file}", head=HEADS, test=TESTS, file=MISCLASS_FILES)
    + expand("results/analysis/misclass_compare/{head}/{file}", head=HEADS, file=MISCLASS_COMPARE_FILES)
    + expand("results/analysis/difficulty/{head}/{file}", head=HEADS, file=DIFFICULTY_FILES)
    + expand("results/analysis/label_noise/{head}/{file}", head=HEADS, file=LABEL_NOISE_FILES)
)
