"""The final report: one self-contained HTML page (and a Markdown twin) that answers
"why is test set 2 harder?" from every metric and analysis the workflow produced.

    results/report/index.html   figures embedded as base64 data URIs, inline CSS, no external
                                assets: opens offline, can be mailed as one file
    results/report/report.md    the same content in Markdown, figures referenced relatively
    results/report/answer.json  the answer for machines

The step in three parts: scripts.lib.report.collect reads the rule's inputs (and the benchmark
files), scripts.lib.report.document builds one document model from them (its sections:
scripts.lib.report.sections; plain-text values and figures: scripts.lib.report.format), scripts.lib.report.render
renders it with two Jinja2 templates (templates/report.html, autoescaped; templates/report.md,
through the Markdown `md` filter). The answer itself is scripts.lib.report.answer.

CLI: python -m scripts.report.report --config JSON --template T [--md-template T] [--benchmarks TSV ...]
     --html OUT --markdown OUT [--answer OUT] --input NAME=PATH ...
     (names: scripts.lib.report.collect; the rule passes what workflow/rules/common.smk `for_report` registered)
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, write_json
from scripts.lib.images.pictures import drop_thumbnails
from scripts.lib.images.thumbnails import PAGE_LIMIT_BYTES
from scripts.lib.options import merge_options
from scripts.lib.report.answer import Headline, answer_json
from scripts.lib.report.collect import collect
from scripts.lib.report.document import document
from scripts.lib.report.render import render_html, render_markdown
from scripts.lib.step_outputs import parse_outputs

__all__ = ["build_report", "main", "render_html", "render_markdown", "report_options"]

MD_TEMPLATE = Path(__file__).with_name("templates") / "report.md"


def report_options(config: dict[str, Any]) -> dict[str, Any]:
    # The config `report:` section over its schema defaults (a partial config from a test works too).
    opts = merge_options(config.get("report"), "report")
    for i, row in enumerate(opts["reference"] or []):
        if not isinstance(row, dict) or "name" not in row:
            raise FeatgapError(f"config report.reference[{i}]: expected {{name, test1, test2, note}}")
    return opts


# ------------------------------------------------------------------ the step
def build_report(*, inputs: Mapping[str, str | os.PathLike], config: dict[str, Any], template: str | os.PathLike,
                 out_html: str | os.PathLike, out_md: str | os.PathLike,
                 benchmarks: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 out_answer: str | os.PathLike | None = None,
                 md_template: str | os.PathLike = MD_TEMPLATE) -> dict[str, Any]:
    """Collect every named input (`kind:key` -> path), write index.html, report.md and answer.json atomically; return the
    document (the templates' context)."""
    opts = report_options(config)
    data = collect(inputs, config, benchmarks)
    wanted = opts["primary_head"]
    if wanted and wanted not in data.heads() + data.baselines() + list(data.metrics):
        raise FeatgapError(f"config report.primary_head: {wanted!r} is not a configured head or baseline "
                           f"(known: {data.heads() + data.baselines()})")
    out_md = Path(out_md)
    ctx = document(data, opts, out_md.parent)
    page = render_html(ctx, template)
    # The page stays one file within PAGE_LIMIT_BYTES: the pictures give way to the figures.
    if data.pictures and len(page.encode()) > PAGE_LIMIT_BYTES:
        drop_thumbnails(data.pictures, len(page.encode()) - PAGE_LIMIT_BYTES)
        page = render_html(ctx, template)
    text = render_markdown(ctx, md_template)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    with atomic_path(out_md) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if out_answer is not None:
        write_json(out_answer, {**answer_json(ctx["headline"]), "head": data.primary_head()})
    return ctx


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the self-contained HTML report and its Markdown twin.")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                        help="a file the report reads, by name: metrics:HEAD/TEST, gap:HEAD, shift, ... (repeatable)")
    parser.add_argument("--config", required=True, help="JSON: the whole config used")
    parser.add_argument("--template", required=True, help="Jinja2 HTML template")
    parser.add_argument("--md-template", default=str(MD_TEMPLATE), help="Jinja2 Markdown template")
    parser.add_argument("--benchmarks", action="append", default=None, metavar="TSV",
                        help="a benchmark file the rules declare (repeatable; missing ones skipped), or a folder")
    parser.add_argument("--html", required=True, help="results/report/index.html")
    parser.add_argument("--markdown", required=True, help="results/report/report.md")
    parser.add_argument("--answer", default=None, help="results/report/answer.json (the answer for machines)")
    args = parser.parse_args(argv)
    config = parse_json_arg(args.config, "config")
    if not isinstance(config, dict):
        raise FeatgapError("--config: expected a JSON object (the config)")
    ctx = build_report(inputs=parse_outputs(args.input, "--input"), config=config, template=args.template, out_html=args.html,
                       out_md=args.markdown, benchmarks=args.benchmarks, out_answer=args.answer,
                       md_template=args.md_template)
    hl: Headline = ctx["headline"]
    print(hl.gap_sentence)
    for e in hl.ranking:
        print(f"  {e.level:>8}  {e.cause}: {e.sentence}")
    print(f"wrote {args.html} and {args.markdown}")


if __name__ == "__main__":
    run_cli(main)
