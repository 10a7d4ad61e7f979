# Data stage: (demo generation) → CSV byte-range plan → Parquet shards per part → manifest → QC;
# an image split (`data.<split>: {images: FOLDER}`) instead: image-list plan → features per part
# (extract) → the same manifest. Each route's rules are constrained to its splits.
# Every path in a shell command is quoted (`:q`): data paths may hold spaces, quotes or `$(…)`.


if config["demo"]["enabled"]:

    rule generate_demo:
        input:
            code=code("data.generate_demo"),
        output:
            # Test set 2's twins (every subset of the planted causes removed): the decomposition's check.
            **({"twins": f"{config['demo']['out_dir']}/twins/twins.json"} if config["demo"]["twins"] else {}),
            train=config["data"]["train"],
            test1=config["data"]["test1"],
            test2=config["data"]["test2"],
            truth=f"{config['demo']['out_dir']}/truth.json",
        log:
            "logs/generate_demo.log",
        conda:
            "../../envs/featgap.yaml"
        params:
            out_dir=lambda wc, output: Path(output.truth).parent,
            spec=" ".join(
                f"--{key.replace('_', '-')} {shlex.quote(str(value))}"
                for key, value in config["demo"].items()
                if key not in ("enabled", "out_dir") and value is not None
            ),
        shell:
            "python -m scripts.data.generate_demo --out-dir {params.out_dir:q} {params.spec} > {log:q} 2>&1"


rule plan_convert:
    input:
        csv=lambda wc: config["data"][wc.split],
        code=code("data.convert"),
    output:
        "results/parquet/{split}.plan.json",
    log:
        "logs/convert/{split}.plan.log",
    wildcard_constraints:
        split=CSV_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    params:
        parts=lambda wc: config["convert"]["parts"][wc.split],
        columns=as_json(config["columns"]),
        dim=config["dim"],
        # Content, not only mtime: a CSV edited with its mtime kept still reruns the conversion.
        source=lambda wc: "generated" if config["demo"]["enabled"] else source_stamp(config["data"][wc.split]),
    shell:
        "python -m scripts.data.convert plan --csv {input.csv:q} --out {output:q} --parts {params.parts}"
        " --columns {params.columns} --dim {params.dim} > {log:q} 2>&1"


rule convert_part:
    input:
        csv=lambda wc: config["data"][wc.split],
        plan="results/parquet/{split}.plan.json",
        code=code("data.convert"),
    output:
        "results/parquet/{split}/part-{part}.parquet",
    log:
        "logs/convert/{split}.{part}.log",
    benchmark:
        "benchmarks/convert/{split}.{part}.tsv"
    wildcard_constraints:
        split=CSV_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # Measured: ~700 MB at 64 MB chunks, whatever the file size; ≥30 MB/s even on a busy node.
        mem_mb=lambda wc: 700 + 8 * config["convert"]["chunk_mb"],
        runtime=lambda wc, input: 5 + int(input.size_mb / config["convert"]["parts"][wc.split] / 30 / 60),
    params:
        num_classes=config["num_classes"],
        row_group_rows=config["convert"]["row_group_rows"],
        compression=config["convert"]["compression"],
        chunk_mb=config["convert"]["chunk_mb"],
    shell:
        "POLARS_MAX_THREADS={threads} python -m scripts.data.convert part --plan {input.plan:q} --part {wildcards.part}"
        " --out {output:q} --num-classes {params.num_classes} --row-group-rows {params.row_group_rows}"
        " --compression {params.compression} --chunk-mb {params.chunk_mb}"
        " > {log:q} 2>&1"


rule manifest:
    input:
        plan="results/parquet/{split}.plan.json",
        parts=lambda wc: expand("results/parquet/{{split}}/part-{part}.parquet", part=part_ids(wc.split)),
        code=code("data.convert"),
    output:
        manifest_path("{split}"),
    log:
        "logs/convert/{split}.manifest.log",
    wildcard_constraints:
        split=CSV_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        # Streams every shard once for its CRC-32 (~1.5 GB/s from cache, ≥100 MB/s from disk).
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 100 / 60),
    shell:
        "python -m scripts.data.convert manifest --plan {input.plan:q} --out {output:q} {input.parts:q} > {log:q} 2>&1"


# ---------------------------------------------------------------- the image route (extract)
rule plan_extract:
    input:
        # The train split's {folder: label} when extract.class_map is `train` (test splits only).
        class_map_split=lambda wc: (
            [manifest_path("train")] if EXTRACT["class_map"] == "train" and wc.split != "train" else []
        ),
        code=code("data.extract"),
    output:
        "results/parquet/{split}.plan.json",
    log:
        "logs/extract/{split}.plan.log",
    wildcard_constraints:
        split=IMAGE_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    params:
        folder=lambda wc: config["data"][wc.split]["images"],
        parts=lambda wc: EXTRACT["parts"][wc.split],
        options=as_json(EXTRACT),
        dim=config["dim"],
        num_classes=config["num_classes"],
        class_map=lambda wc, input: (
            f"--class-map-split {shlex.quote(input.class_map_split[0])}"
            if input.class_map_split
            else (
                f"--class-map {shlex.quote(EXTRACT['class_map'])}"
                if EXTRACT["class_map"] not in (None, "train")
                else ""
            )
        ),
        # Images added to or removed from a class folder replan the split.
        source=lambda wc: folder_stamp(config["data"][wc.split]["images"]),
    shell:
        "python -m scripts.data.extract plan --folder {params.folder:q} --out {output:q} --parts {params.parts}"
        " --options {params.options} --dim {params.dim} --num-classes {params.num_classes} {params.class_map}"
        " > {log:q} 2>&1"


rule extract_part:
    input:
        plan="results/parquet/{split}.plan.json",
        code=code("data.extract"),
    output:
        "results/parquet/{split}/part-{part}.parquet",
    log:
        "logs/extract/{split}.{part}.log",
    benchmark:
        "benchmarks/extract/{split}.{part}.tsv"
    wildcard_constraints:
        split=IMAGE_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    threads: EXTRACT["threads"]
    resources:
        # The model, a few batches of decoded images per worker and the shard's row groups.
        mem_mb=3000 + 500 * EXTRACT["workers"],
        runtime=60,
    params:
        options=as_json(EXTRACT),
        seed=config["seed"],
    shell:
        "python -m scripts.data.extract part --plan {input.plan:q} --part {wildcards.part} --out {output:q}"
        " --options {params.options} --seed {params.seed} --threads {threads} > {log:q} 2>&1"


rule extract_manifest:
    input:
        plan="results/parquet/{split}.plan.json",
        parts=lambda wc: expand("results/parquet/{{split}}/part-{part}.parquet", part=part_ids(wc.split)),
        code=code("data.extract"),
    output:
        manifest_path("{split}"),
    log:
        "logs/extract/{split}.manifest.log",
    wildcard_constraints:
        split=IMAGE_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=lambda wc, input: 5 + int(input.size_mb / 100 / 60),
    params:
        options=as_json(EXTRACT),
    shell:
        "python -m scripts.data.extract manifest --plan {input.plan:q} --out {output:q} --options {params.options}"
        " {input.parts:q} > {log:q} 2>&1"


# Optional: each image split as a CSV in the seed files' schema.
rule extract_csv:
    input:
        manifest=manifest_path("{split}"),
        code=code("data.extract"),
    output:
        "results/extract/{split}.csv",
    log:
        "logs/extract/{split}.csv.log",
    wildcard_constraints:
        split=IMAGE_SPLIT_PATTERN,
    conda:
        "../../envs/featgap.yaml"
    shell:
        "python -m scripts.data.extract csv --manifest {input.manifest:q} --out {output:q} > {log:q} 2>&1"


rule validate_split:
    input:
        manifest=manifest_path("{split}"),
        code=code("data.validate"),
    output:
        qc_path("{split}"),
    log:
        "logs/validate/{split}.log",
    benchmark:
        "benchmarks/validate/{split}.tsv"
    conda:
        "../../envs/featgap.yaml"
    resources:
        # Labels and paths of the whole split in memory (~1 KB a row at most), features streamed.
        mem_mb=lambda wc: 1000 + (config["validate"]["expected"][wc.split]["rows"] or 0) // 1000,
        runtime=30,
    params:
        expected=lambda wc: as_json(config["validate"]["expected"][wc.split]),
        num_classes=config["num_classes"],
        on_violation=config["validate"]["on_violation"],
        layout=config["validate"]["layout"],
    shell:
        "python -m scripts.data.validate --manifest {input.manifest:q} --split {wildcards.split} --out {output:q}"
        " --expected {params.expected} --num-classes {params.num_classes}"
        " --on-violation {params.on_violation:q} --layout {params.layout:q} > {log:q} 2>&1"


# Splits against each other (test classes without train rows, shared paths); evaluation needs it.
rule qc_cross:
    input:
        train=manifest_path("train"),
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        code=code("data.qc_cross"),
    output:
        qc_path("cross"),
    log:
        "logs/validate/cross.log",
    benchmark:
        "benchmarks/validate/cross.tsv"
    conda:
        "../../envs/featgap.yaml"
    resources:
        # Labels and paths of the three splits (~200 bytes a row), no features.
        mem_mb=lambda wc: 1000 + (config["validate"]["expected"]["train"]["rows"] or 0) // 2000,
        runtime=30,
    params:
        on_violation=config["validate"]["on_violation"],
    shell:
        "python -m scripts.data.qc_cross --train {input.train:q} --test1 {input.test1:q} --test2 {input.test2:q}"
        " --out {output:q} --on-violation {params.on_violation:q} > {log:q} 2>&1"


ALL_TARGETS.extend(expand(qc_path("{split}"), split=SPLITS) + [qc_path("cross")])
for_report("manifest", manifest_path("{split}"), split=SPLITS)
for_report("qc", qc_path("{split}"), split=SPLITS + ["cross"])
if EXTRACT["csv"]:
    ALL_TARGETS.extend(expand(rules.extract_csv.output[0], split=IMAGE_SPLITS))
for _split in SPLITS:
    benchmarked(rules.convert_part, on=_split in CSV_SPLITS, split=_split, part=part_ids(_split))
    benchmarked(rules.extract_part, on=_split in IMAGE_SPLITS, split=_split, part=part_ids(_split))
benchmarked(rules.validate_split, split=SPLITS)
benchmarked(rules.qc_cross)
