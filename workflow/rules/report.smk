# Report stage: everything the config enables → one self-contained HTML page + Markdown.
# Included last, so ALL_TARGETS already lists every stage's final outputs: the report's inputs are
# exactly what this configuration builds (an analysis that is not configured is simply absent and
# the report says "not run"). The two templates (HTML page, Markdown twin) are inputs: editing
# either reruns only this rule. The benchmark files are the ones the benchmarked rules declare
# (BENCHMARKS, common.smk): passed as parameters, not inputs (no rule lists them as outputs), and
# a missing one is skipped.

REPORT_TEMPLATE = f"{workflow.basedir}/scripts/report_template.html"
REPORT_MD_TEMPLATE = f"{workflow.basedir}/scripts/report_template.md"


# Every final target of the other stages, plus files the report reads that no stage lists as a
# final target (manifests, QC, per-head selection).
REPORT_ARTIFACTS = list(
    dict.fromkeys(
        list(ALL_TARGETS)
        + expand("results/parquet/{split}.manifest.json", split=SPLITS)
        + expand("results/qc/{split}.json", split=SPLITS)
        + expand(head_file("{head}", "selection.json"), head=TRAIN_HEADS)
        # The improve stage's outputs (also final targets of improve.smk when it is on).
        + (IMPROVE_FILES if IMPROVE_VARIANTS else [])
    )
)

_undeclared = sorted(r.name for r in workflow.rules if r.benchmark and r.name not in BENCHMARKED)
if _undeclared:
    raise WorkflowError(f"rules {_undeclared} have a benchmark: but no benchmarked(...) beside them (common.smk)")


rule report:
    input:
        artifacts=REPORT_ARTIFACTS,
        template=REPORT_TEMPLATE,
        md_template=REPORT_MD_TEMPLATE,
        code=code("report"),
    output:
        html=report("results/report/index.html", caption="../report/final_report.rst", category="0. Final report"),
        markdown="results/report/report.md",
        answer="results/report/answer.json",
    log:
        "logs/report.log",
    conda:
        "../../envs/featgap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        config=as_json(config),
        benchmarks=" ".join(f"--benchmarks {shlex.quote(p)}" for p in BENCHMARKS),
    shell:
        "python -m scripts.report --config {params.config} --template {input.template:q}"
        " --md-template {input.md_template:q}"
        " {params.benchmarks} --html {output.html:q} --markdown {output.markdown:q}"
        " --answer {output.answer:q}"
        " {input.artifacts:q} > {log:q} 2>&1"


ALL_TARGETS.extend(["results/report/index.html", "results/report/report.md", "results/report/answer.json"])
