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


# The pictures (on when a test split's paths resolve: images.root, or an image split) of the
# primary head: report.primary_head, else the first head, as the report chooses it.
PICTURES_HEAD = config["report"]["primary_head"] or next(iter(HEADS), None)
if IMAGE_ROOTS and PICTURES_HEAD and "classes" in PICTURE_INPUTS:

    rule pictures:
        input:
            test1=eval_file(PICTURES_HEAD, "test1", "predictions.parquet"),
            test2=eval_file(PICTURES_HEAD, "test2", "predictions.parquet"),
            classes=PICTURE_INPUTS["classes"].format(head=PICTURES_HEAD),
            mislabelled=picture_input("mislabelled", PICTURES_HEAD),
            code=code("report.pictures"),
        output:
            pictures="results/report/pictures.json",
        log:
            "logs/report.pictures.log",
        conda:
            "../../envs/featgap.yaml"
        resources:
            mem_mb=1000,
            runtime=10,
        params:
            outputs=output_args,
            options=as_json({k: v for k, v in config["images"].items() if k != "root"}),
            roots=" ".join(f"--root {shlex.quote(f'{t}={root}')}" for t, root in IMAGE_ROOTS.items()),
            mislabelled=lambda wc, input: (
                f"--mislabelled {shlex.quote(input.mislabelled[0])}" if input.mislabelled else ""
            ),
            head=PICTURES_HEAD,
        shell:
            "python -m scripts.report.pictures --predictions test1={input.test1:q} --predictions test2={input.test2:q}"
            " {params.roots} --classes {input.classes:q} {params.mislabelled} --options {params.options}"
            " --head-name {params.head:q} {params.outputs} > {log:q} 2>&1"

    for_report("pictures", rules.pictures.output.pictures)


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
