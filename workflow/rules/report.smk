# Report stage: everything the config enables → one self-contained HTML page + Markdown.
# Included last, so every stage has registered the files the report reads (REPORT_INPUTS,
# common.smk `for_report`): its inputs are exactly those, by name, and the step is told each
# file's name (`--input NAME=PATH`), never left to work it out from the path. An analysis that is
# switched off registers nothing and the report omits it. The two templates (HTML page, Markdown
# twin) are inputs: editing either reruns only this rule. The benchmark files are the ones the
# benchmarked rules declare (BENCHMARKS, common.smk): passed as parameters, not inputs (no rule
# lists them as outputs), and a missing one is skipped.

REPORT_TEMPLATE = f"{workflow.basedir}/scripts/report/templates/report.html"
REPORT_MD_TEMPLATE = f"{workflow.basedir}/scripts/report/templates/report.md"


_undeclared = sorted(r.name for r in workflow.rules if r.benchmark and r.name not in BENCHMARKED)
if _undeclared:
    raise WorkflowError(f"rules {_undeclared} have a benchmark: but no benchmarked(...) beside them (common.smk)")


rule report:
    input:
        **REPORT_INPUTS,
        template=REPORT_TEMPLATE,
        md_template=REPORT_MD_TEMPLATE,
        code=code("report.report"),
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
        inputs=lambda wc, input: " ".join(
            f"--input {shlex.quote(f'{name}={path}')}" for name, path in input.items() if name in REPORT_INPUTS
        ),
    shell:
        "python -m scripts.report.report --config {params.config} --template {input.template:q}"
        " --md-template {input.md_template:q}"
        " {params.benchmarks} --html {output.html:q} --markdown {output.markdown:q}"
        " --answer {output.answer:q} {params.inputs} > {log:q} 2>&1"


ALL_TARGETS.extend(["results/report/index.html", "results/report/report.md", "results/report/answer.json"])
