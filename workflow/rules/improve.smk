# Improve stage: what, if anything, makes test set 2 better? Each configured variant of the primary
# head is trained with hyperparameters chosen on the train holdout (improve_train: the same step as
# train_head, with the variant's keys changed; improve.hyperparameters: inherit the baseline's
# choice, or select anew), then every variant is compared with the primary head on the
# same test images (improve_compare → results/improve/summary.json, variants.csv, improve.png).
# IMPROVE, IMPROVE_VARIANTS, improve_file and IMPROVE_FILES (read by report.smk too), TRAIN_MEM_MB and
# HEAD_RUNTIME (shared with train.smk): common.smk.
IMPROVE_BASELINE = IMPROVE["baseline"] or config["report"]["primary_head"] or (TRAIN_HEADS[0] if TRAIN_HEADS else None)
RETRAIN_VARIANTS = [n for n, v in IMPROVE_VARIANTS.items() if v["kind"] == "retrain"]
# inherit: a retrained variant trains once with the hyperparameters the baseline's selection chose
# (its selection.json an input); select: it runs its own selection on the train holdout.
INHERIT = IMPROVE["hyperparameters"] == "inherit"

if IMPROVE_VARIANTS and IMPROVE_BASELINE not in TRAIN_HEADS:
    raise WorkflowError(f"config improve.baseline: {IMPROVE_BASELINE!r} is not a trained head (heads: {TRAIN_HEADS})")
_unknown = {h for v in IMPROVE_VARIANTS.values() if v["kind"] == "ensemble" for h in v["heads"] if h not in HEADS}
if _unknown:
    raise WorkflowError(f"config improve.variants: ensemble members {sorted(_unknown)} are not configured heads")
_short = [n for n, v in IMPROVE_VARIANTS.items() if v["kind"] == "ensemble" and len(v["heads"]) < 2]
if _short:
    raise WorkflowError(f"config improve.variants {_short}: an ensemble needs at least 2 heads")

_too_wide = [name for name, spec in IMPROVE_VARIANTS.items() if (spec["set"].get("pca_whiten") or 0) > config["dim"]]
if _too_wide:
    raise WorkflowError(f"config improve.variants {_too_wide}: pca_whiten must be at most dim ({config['dim']})")

# The one place that says which model files each variant is made of (inputs and the step's JSON).
VARIANT_MODELS = {
    name: (
        [improve_file(f"{name}/model.pt")]
        if spec["kind"] == "retrain"
        else [head_file(h, "model.pt") for h in spec["heads"]]
    )
    for name, spec in IMPROVE_VARIANTS.items()
}

# The accuracy-on-the-line fit (analysis.smk's reference_line), an input only when that rule exists:
# switching it on or off reruns improve_compare (its input set changes), never the variants' training.
IMPROVE_REFERENCE = (
    [f"{analysis_dir('reference_line')}/summary.json"]
    if any(r.name == "reference_line" for r in workflow.rules)
    else []
)


rule improve_train:
    input:
        manifest=manifest_path("train"),
        qc=qc_path("train"),
        inherit=[head_file(IMPROVE_BASELINE, "selection.json")] if INHERIT else [],
        code=code("train.train_head"),
    output:
        model=improve_file("{variant}/model.pt"),
        history=improve_file("{variant}/history.csv"),
        selection=improve_file("{variant}/selection.json"),
    log:
        "logs/improve/{variant}.log",
    benchmark:
        "benchmarks/improve/{variant}.tsv"
    wildcard_constraints:
        variant="|".join(re.escape(v) for v in RETRAIN_VARIANTS) or "no-variants",
    conda:
        "../../envs/featgap.yaml"
    threads: TRAIN["threads"]
    resources:
        mem_mb=TRAIN_MEM_MB,
        runtime=lambda wc: HEAD_RUNTIME[IMPROVE_BASELINE],
    params:
        head=lambda wc: as_json(
            {
                **config["heads"][IMPROVE_BASELINE],
                **({} if INHERIT else IMPROVE["retrain"]),
                **IMPROVE_VARIANTS[wc.variant]["set"],
            }
        ),
        train=as_json(TRAIN),
        num_classes=config["num_classes"],
        seed=config["seed"],
        outputs=output_args,
        inherit=lambda wc, input: " ".join(f"--inherit-from {shlex.quote(p)}" for p in input.inherit),
    shell:
        "python -m scripts.train.train_head --manifest {input.manifest:q} {params.outputs}"
        " --name {wildcards.variant:q} --options {params.head} --train-options {params.train}"
        " --num-classes {params.num_classes} --seed {params.seed} --threads {threads}"
        " {params.inherit} > {log:q} 2>&1"


rule improve_compare:
    input:
        baseline=head_file(IMPROVE_BASELINE, "model.pt"),
        models=sorted({m for models in VARIANT_MODELS.values() for m in models}),
        test1=manifest_path("test1"),
        test2=manifest_path("test2"),
        qc=[qc_path("test1"), qc_path("test2"), qc_path("cross")],
        reference=IMPROVE_REFERENCE,
        code=code("improve.improve_compare"),
    output:
        summary=IMPROVE_FILES[0],
        table=IMPROVE_FILES[1],
        figure=report(
            IMPROVE_FILES[2],
            caption="../report/improve.rst",
            category="7. Improve",
        ),
    log:
        "logs/improve/compare.log",
    benchmark:
        "benchmarks/improve/compare.tsv"
    conda:
        "../../envs/featgap.yaml"
    threads: 2
    resources:
        # Both test splits' features at once (50k + 10k × 1024 float32 = 250 MB) and one head's logits.
        mem_mb=3000,
        runtime=30,
    params:
        variants=as_json(
            {
                name: {
                    "kind": spec["kind"],
                    "models": VARIANT_MODELS[name],
                    "set": spec["set"],
                    "hyperparameters": IMPROVE["hyperparameters"],
                }
                for name, spec in IMPROVE_VARIANTS.items()
            }
        ),
        baseline=IMPROVE_BASELINE,
        left_out=as_json(IMPROVE_LEFT_OUT),
        bootstrap=IMPROVE["bootstrap"],
        alpha=IMPROVE["alpha"],
        seed=config["seed"],
        outputs=output_args,
        reference=lambda wc, input: " ".join(f"--reference-line {shlex.quote(p)}" for p in input.reference),
    shell:
        "python -m scripts.improve.improve_compare --baseline {input.baseline:q} --baseline-name {params.baseline:q}"
        " --variants {params.variants} --test1 {input.test1:q} --test2 {input.test2:q}"
        " {params.outputs} --bootstrap {params.bootstrap} --alpha {params.alpha}"
        " --seed {params.seed} {params.reference} --left-out {params.left_out}"
        " --threads {threads} > {log:q} 2>&1"


if IMPROVE_VARIANTS:
    ALL_TARGETS.extend(rules.improve_compare.output)
    for_report("improve", rules.improve_compare.output.summary)
benchmarked(rules.improve_train, variant=RETRAIN_VARIANTS)
benchmarked(rules.improve_compare, on=bool(IMPROVE_VARIANTS))
