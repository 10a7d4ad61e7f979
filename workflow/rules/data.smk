# Data stage: (demo generation) → CSV byte-range plan → Parquet shards per part → manifest → QC.


if config["demo"]["enabled"]:

    rule generate_demo:
        input:
            code=code("generate_demo"),
        output:
            train=config["data"]["train"],
            test1=config["data"]["test1"],
            test2=config["data"]["test2"],
            truth=f"{config['demo']['out_dir']}/truth.json",
        params:
            out_dir=lambda wc, output: Path(output.truth).parent,
            spec=" ".join(
                f"--{key.replace('_', '-')} {value}"
                for key, value in config["demo"].items()
                if key not in ("enabled", "out_dir") and value is not None
            ),
        log:
            "logs/generate_demo.log",
        conda:
            "../../envs/featgap.yaml"
        shell:
            "python -m scripts.generate_demo --out-dir {params.out_dir} {params.spec} > {log} 2>&1"


rule plan_convert:
    input:
        csv=lambda wc: config["data"][wc.split],
        code=code("convert"),
    output:
        "results/parquet/{split}.plan.json",
    params:
        parts=lambda wc: config["convert"]["parts"][wc.split],
        columns=as_json(config["columns"]),
        dim=config["dim"],
    log:
        "logs/convert/{split}.plan.log",
    conda:
        "../../envs/featgap.yaml"
    shell:
        "python -m scripts.convert plan --csv {input.csv} --out {output} --parts {params.parts}"
        " --columns {params.columns} --dim {params.dim} > {log} 2>&1"


rule convert_part:
    input:
        csv=lambda wc: config["data"][wc.split],
        plan="results/parquet/{split}.plan.json",
        code=code("convert"),
    output:
        "results/parquet/{split}/part-{part}.parquet",
    params:
        num_classes=config["num_classes"],
        row_group_rows=config["convert"]["row_group_rows"],
        compression=config["convert"]["compression"],
        chunk_mb=config["convert"]["chunk_mb"],
    threads: 2
    resources:
        # Measured: ~700 MB at 64 MB chunks, whatever the file size; ≥30 MB/s even on a busy node.
        mem_mb=lambda wc: 700 + 8 * config["convert"]["chunk_mb"],
        runtime=lambda wc, input: 5 + int(input.size_mb / config["convert"]["parts"][wc.split] / 30 / 60),
    log:
        "logs/convert/{split}.{part}.log",
    benchmark:
        "benchmarks/convert/{split}.{part}.tsv"
    conda:
        "../../envs/featgap.yaml"
    shell:
        "POLARS_MAX_THREADS={threads} python -m scripts.convert part --plan {input.plan} --part {wildcards.part} --out {output}"
        " --num-classes {params.num_classes} --row-group-rows {params.row_group_rows}"
        " --compression {params.compression} --chunk-mb {params.chunk_mb}"
        " > {log} 2>&1"


rule manifest:
    input:
        plan="results/parquet/{split}.plan.json",
        parts=lambda wc: expand("results/parquet/{{split}}/part-{part}.parquet", part=part_ids(wc.split)),
        code=code("convert"),
    output:
        "results/parquet/{split}.manifest.json",
    log:
        "logs/convert/{split}.manifest.log",
    conda:
        "../../envs/featgap.yaml"
    shell:
        "python -m scripts.convert manifest --plan {input.plan} --out {output} {input.parts} > {log} 2>&1"


rule validate_split:
    input:
        manifest="results/parquet/{split}.manifest.json",
        code=code("validate"),
    output:
        "results/qc/{split}.json",
    params:
        expected=lambda wc: as_json(config["validate"].get("expected", {}).get(wc.split, {})),
        num_classes=config["num_classes"],
        on_violation=config["validate"]["on_violation"],
        layout=config["validate"]["layout"],
    resources:
        # Labels and paths of the whole split in memory (~1 KB a row at most), features streamed.
        mem_mb=lambda wc: 1000
        + (config["validate"].get("expected", {}).get(wc.split, {}).get("rows") or 0) // 1000,
        runtime=30,
    log:
        "logs/validate/{split}.log",
    benchmark:
        "benchmarks/validate/{split}.tsv"
    conda:
        "../../envs/featgap.yaml"
    shell:
        "python -m scripts.validate --manifest {input.manifest} --split {wildcards.split} --out {output}"
        " --expected {params.expected} --num-classes {params.num_classes}"
        " --on-violation {params.on_violation} --layout {params.layout} > {log} 2>&1"


ALL_TARGETS.extend(expand("results/qc/{split}.json", split=SPLITS))
