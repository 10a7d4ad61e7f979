"""The final report: one self-contained HTML page (and a Markdown twin) that answers
"why is test set 2 harder?" from every metric and analysis the workflow produced.

    results/report/index.html   figures embedded as base64 data URIs, inline CSS, no external
                                assets: opens offline, can be mailed as one file
    results/report/report.md    the same content in Markdown, figures referenced relatively

Inputs are the files of the report rule (see scripts.report_collect for how they are recognised),
the benchmark folder, the config (JSON) and the Jinja2 template. Every string that comes from data
or config is escaped: the template autoescapes, and nothing is marked safe.

CLI: python -m scripts.report --config JSON --template T --benchmarks DIR --html OUT --markdown OUT FILES...
"""
from __future__ import annotations

import argparse
import base64
import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scripts.featio import (
    FEATGAP_VERSION,
    FeatgapError,
    atomic_path,
    parse_json_arg,
    run_cli,
    write_json,
)
from scripts.options import merge_options
from scripts.report_collect import Analysis, ReportData, collect
from scripts.report_evidence import (
    HYPOTHESES,
    Headline,
    answer_json,
    gap_interval,
    headline,
    improve_enabled,
    improve_ranking,
)

METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "balanced_accuracy": "balanced accuracy",
                 "macro_precision": "macro precision", "macro_recall": "macro recall", "macro_f1": "macro F1",
                 "nll": "NLL", "ece": "ECE"}
# Summaries are written with sorted keys; tables read better with identifiers first.
LEADING_COLUMNS = ["rank", "class", "name", "feature", "cluster", "train_rows", "n_features", "acc_test1",
                   "acc_test2", "drop", "category", "path", "label", "label_name", "pred", "pred_name", "real",
                   "real_names", "confidence"]
SECTION_TITLES = {**HYPOTHESES, "shift": "Feature shift between the test sets (detectable differences)",
                  "misclass": "Features of the misclassified samples",
                  "misclass_compare": "Misclassification signature: test set 2 vs test set 1",
                  "embedding": "Embedding views", "reference_line": "Accuracy on the line: the expected gap",
                  "train_reference": "Train reference (class means)",
                  "real_labels": "ReaL labels: test set 1's errors re-judged",
                  "improve": "What improves test set 2?"}
# Sections after the ranked causes (and the improve stage), in this order; anything else follows
# alphabetically.
DESCRIPTIVE = ("reference_line", "real_labels", "gap", "shift", "misclass_compare", "misclass", "embedding")


def report_options(config: dict[str, Any]) -> dict[str, Any]:
    # The config `report:` section over its schema defaults (a partial config from a test works too).
    opts = merge_options(config.get("report"), "report")
    for i, row in enumerate(opts["reference"] or []):
        if not isinstance(row, dict) or "name" not in row:
            raise FeatgapError(f"config report.reference[{i}]: expected {{name, test1, test2, note}}")
    return opts


# ------------------------------------------------------------------ formatting (plain text)
def pct(value: Any, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def ci_text(ci: Any, digits: int = 2) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{pct(ci[0], digits)}, {pct(ci[1], digits)}]"
    return ""


def share_text(e) -> str:
    """An evidence block's share of the gap as text: points with interval, or not estimable."""
    if e.points is None:
        return "not estimable"
    ci = e.ci95
    return f"{e.points:.1f} points" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if None not in ci else "")


def fmt_value(value: Any) -> str:
    """A number from a summary as short text (lists truncated)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(fmt_value(v) for v in value[:8])
        return f"[{shown}{', …' if len(value) > 8 else ''}]" + (f" ({len(value)})" if len(value) > 8 else "")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in list(value.items())[:8]) + "}"
    return str(value)


def scalar_numbers(numbers: dict[str, Any], limit: int) -> list[tuple[str, str]]:
    """(key, text) for the scalar and short-list entries of a summary's numbers."""
    rows = []
    for key, value in numbers.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], (dict, list))):
            continue  # tables: shown separately or in the analysis's own table file
        rows.append((str(key), fmt_value(value)))
    return rows[:limit]


def record_tables(numbers: dict[str, Any], max_rows: int = 20) -> list[dict[str, Any]]:
    """Lists of records inside a summary's numbers as small tables {title, columns, rows}."""
    tables = []
    for key, value in numbers.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            columns.sort(key=lambda c: LEADING_COLUMNS.index(c) if c in LEADING_COLUMNS else len(LEADING_COLUMNS))
            rows = [[fmt_value(row.get(c)) for c in columns] for row in value[:max_rows]]
            tables.append({"title": str(key), "columns": [str(c) for c in columns], "rows": rows,
                           "more": max(0, len(value) - max_rows)})
    return tables


# ------------------------------------------------------------------ figures
@dataclass
class Figure:
    path: str
    src: str | None  # data URI; None when the file is missing
    md_path: str  # relative to the Markdown file


def embed(path: str, md_dir: Path) -> Figure:
    file = Path(path)
    rel = os.path.relpath(file.resolve(), md_dir.resolve()) if file.exists() else path
    rel = Path(rel).as_posix()
    if not file.is_file():
        return Figure(path=path, src=None, md_path=rel)
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        file.suffix.lower(), "application/octet-stream")
    return Figure(path=path, src=f"data:{kind};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}",
                  md_path=rel)


# ------------------------------------------------------------------ sections
@dataclass
class Section:
    id: str
    title: str
    ran: bool
    verdict: str = ""
    level: str = ""
    subject: str = ""  # which head / test the main block is about
    numbers: list[tuple[str, str]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    table: str | None = None
    others: list[dict[str, Any]] = field(default_factory=list)  # other heads / tests
    note: str = ""


def analysis_section(sid: str, items: list[Analysis], primary: Analysis | None, opts: dict, md_dir: Path,
                     level: str = "", note: str = "") -> Section:
    title = SECTION_TITLES.get(sid, sid)
    if primary is None:
        return Section(id=sid, title=title, ran=False, level=level or "not run", note=note)
    section = Section(id=sid, title=title, ran=True, verdict=primary.verdict, level=level,
                      subject=primary.key or "both test sets",
                      numbers=scalar_numbers(primary.numbers, int(opts["max_numbers"])),
                      tables=record_tables(primary.numbers, int(opts["table_rows"])),
                      figures=[embed(f, md_dir) for f in primary.figures], table=primary.table, note=note)
    for other in items:
        if other is primary:
            continue
        figures = [embed(f, md_dir) for f in other.figures] if opts["figures"] == "all" else []
        section.others.append({"subject": other.key or other.kind, "verdict": other.verdict, "figures": figures,
                               "table": other.table})
    return section


def pick(items: list[Analysis], *preferred: str) -> Analysis | None:
    for key in preferred:
        for item in items:
            if item.key == key:
                return item
    return items[0] if items else None


def build_sections(data: ReportData, head_line: Headline, opts: dict, md_dir: Path) -> list[Section]:
    """The ranked causes' sections first (each analysis's own evidence sentence as the note), then
    the descriptive analyses, then anything added later."""
    head = data.primary_head() or ""
    ranked = {e.kind: e for e in head_line.ranking}
    order = list(ranked) + ["improve"] + [k for k in DESCRIPTIVE if k not in ranked]
    order += sorted(k for k in data.analyses if k not in order)
    sections = []
    for kind in order:
        if kind == "improve":
            if improve_enabled(data):  # absent when the stage is off
                sections.append(improve_section(data, md_dir))
            continue
        items = list(data.analyses.get(kind, {}).values())
        if kind not in ranked and not items and kind not in ("gap", "shift", "embedding"):
            continue  # an optional analysis that this config does not run is simply absent
        prefer = (f"{head}/test2", head, "") if kind == "misclass" else (head, "")
        e = ranked.get(kind)
        section = analysis_section(kind, items, pick(items, *prefer), opts, md_dir, level=e.level if e else "")
        section.note = e.sentence if e is not None and section.ran else ""
        sections.append(section)
    return sections


def _delta(block: Any) -> str:
    """A paired difference from the improve stage: '+0.42 [−0.10, +0.95]' (points)."""
    block = block if isinstance(block, dict) else {}
    points, ci = block.get("points"), block.get("ci95")
    if not isinstance(points, (int, float)) or not math.isfinite(points):
        return "–"
    text = f"{points:+.2f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        text += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return text


def _on_line(block: Any) -> list[str]:
    """Expected test-2 top-1 and effective robustness '+0.42 [−0.10, +0.95]' from the improve stage."""
    block = block if isinstance(block, dict) else {}
    return [_pct_points(block.get("expected_test2_top1")),
            _delta({"points": block.get("effective_robustness"), "ci95": block.get("ci95")})]


def _pct_points(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def improve_section(data: ReportData, md_dir: Path) -> Section:
    """Variants of the primary head ranked by their test-2 gain, with intervals, the test-1 change,
    the flag for gains bought with a test-1 loss, the stage's figure and its verdict."""
    summary = data.improve
    title = SECTION_TITLES["improve"]
    if summary is None:
        return Section(id="improve", title=title, ran=False, level="not run")
    line = summary.get("reference_line") if isinstance(summary.get("reference_line"), dict) else None
    rows = []
    for rank, v in enumerate(improve_ranking(summary), 1):
        flag = str(v.get("flag") or "–")  # the stage's own judgement (scripts.improve.flag), never re-made here
        changes = v.get("changes") if isinstance(v.get("changes"), dict) else {}
        rows.append([fmt_value(rank), str(v.get("name", "")), str(v.get("kind", "")),
                     ", ".join(f"{k}={fmt_value(x)}" for k, x in changes.items()) or "–",
                     _pct_points(v.get("test2_top1")), _delta(v.get("delta_test2")),
                     fmt_value((v.get("delta_test2") or {}).get("mcnemar_p_holm")), _pct_points(v.get("test1_top1")),
                     _delta(v.get("delta_test1")), _delta(v.get("gap_change")), flag]
                    + (_on_line(v.get("reference_line")) if line else []))
    columns = ["rank", "variant", "kind", "changes", "test 2 top-1 %", "test 2 change (points) [95% CI]",
               "Holm p (test 2)", "test 1 top-1 %", "test 1 change (points) [95% CI]", "gap change (points) [95% CI]",
               "flag"]
    if line:  # only when the accuracy-on-the-line fit is configured: the stage's own numbers
        columns += ["expected test 2 top-1 % (on the line)", "effective robustness (points) [95% CI]"]
    table = {"title": "variants, ranked by test-2 gain", "columns": columns, "rows": rows, "more": 0}
    method = summary.get("method") or {}
    figure = Path(data.improve_path or "").parent / "improve.png"
    numbers = [("baseline (primary head)", str(summary.get("baseline", "–"))),
               ("baseline test 1 top-1 %", _pct_points(summary.get("baseline_test1_top1"))),
               ("baseline test 2 top-1 %", _pct_points(summary.get("baseline_test2_top1"))),
               ("interval", str(method.get("interval", "–"))), ("test", str(method.get("test", "–")))]
    if line:
        expected, er = _on_line(line.get("baseline"))
        slope, intercept = (f"{v:.3f}" if isinstance(v, (int, float)) else "–"
                            for v in (line.get("slope"), line.get("intercept")))
        fit = f"{line.get('models', '–')} models, slope {slope}, intercept {intercept}"
        numbers += [("reference line", fit),
                    ("baseline expected test 2 top-1 % (on the line)", expected),
                    ("baseline effective robustness (points) [95% CI]", er)]
    return Section(id="improve", title=title, ran=True, verdict=str(summary.get("verdict") or ""),
                   subject=f"variants of {summary.get('baseline', '–')}", numbers=numbers, tables=[table],
                   figures=[embed(str(figure), md_dir)], table=str(figure.with_name("variants.csv")),
                   note="Not a cause of the gap: what the configured variants of the primary head change on both "
                        "test sets, compared on the same images.")


# ------------------------------------------------------------------ tables
def summary_rows(data: ReportData) -> list[dict[str, str]]:
    rows = []
    baselines = set(data.baselines())
    for model in data.models():
        m = data.metrics[model]
        cells: dict[str, str] = {"model": model, "kind": "baseline" if model in baselines else "head"}
        for test in ("test1", "test2"):
            block = m.get(test) or {}
            values, cis = block.get("metrics") or {}, block.get("ci95") or {}
            cells[f"{test}_top1"] = pct(values.get("top1"))
            cells[f"{test}_top1_ci"] = ci_text(cis.get("top1"))
            cells[f"{test}_top5"] = pct(values.get("top5"))
            cells[f"{test}_bal"] = pct(values.get("balanced_accuracy"))
        real = next((b["real"] for t, b in sorted(m.items()) if isinstance(b.get("real"), dict)), None)
        cells["real_top1"] = pct(real.get("top1")) if real else "–"
        cells["real_top1_ci"] = ci_text((real.get("ci95") or {}).get("top1")) if real else ""
        cells["real_test"] = str(real.get("test", "")) if real else ""
        g = gap_interval(m["test1"], m["test2"]) if "test1" in m and "test2" in m else None
        cells["gap"] = f"{g[0] * 100:.2f}" if g else "–"
        cells["gap_ci"] = f"[{g[1] * 100:.2f}, {g[2] * 100:.2f}]" if g and not math.isnan(g[1]) else ""
        rows.append(cells)
    return rows


def reference_rows(opts: dict) -> list[dict[str, str]]:
    rows = []
    for ref in opts["reference"] or []:
        t1, t2 = ref.get("test1"), ref.get("test2")
        gap = f"{t1 - t2:.2f}" if isinstance(t1, (int, float)) and isinstance(t2, (int, float)) else "–"
        rows.append({"model": str(ref["name"]), "note": str(ref.get("note") or ""),
                     "test1_top1": "–" if t1 is None else f"{float(t1):.2f}",
                     "test2_top1": "–" if t2 is None else f"{float(t2):.2f}", "gap": gap})
    return rows


def model_details(data: ReportData, opts: dict, md_dir: Path) -> list[dict[str, Any]]:
    primary = data.primary_head()
    details = []
    for model in data.models():
        per_test = data.metrics[model]
        metrics_rows = []
        for key, label in METRIC_LABELS.items():
            row = [label]
            for test in ("test1", "test2"):
                block = per_test.get(test) or {}
                value = (block.get("metrics") or {}).get(key)
                ci = (block.get("ci95") or {}).get(key)
                if key in ("nll", "ece"):
                    row.append(fmt_value(value) + (f" [{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else ""))
                else:
                    row.append(f"{pct(value)} {ci_text(ci)}".strip())
            metrics_rows.append(row)
        figures = []
        if opts["figures"] == "all" or model == primary:
            for test in ("test1", "test2"):
                path = ((per_test.get(test) or {}).get("files") or {}).get("confused_pairs.png")
                if path:
                    figures.append(embed(path, md_dir))
        selection = data.selections.get(model) or {}
        winner = selection.get("winner") or {}
        chosen = ", ".join(f"{k} {fmt_value(v)}" for k, v in winner.items() if k != "candidate")
        confused = []
        for test in ("test1", "test2"):
            for pair in ((per_test.get(test) or {}).get("top_confused") or [])[:5]:
                confused.append([test, str(pair.get("true_name", pair.get("true"))),
                                 str(pair.get("pred_name", pair.get("pred"))), fmt_value(pair.get("count"))])
        # evaluate's own caveat (backbone_saw_train): the holdout that chose these hyperparameters and
        # fitted the temperature behind NLL/ECE holds images the backbone was trained on.
        caveat = next((b.get("calibration_caveat") for b in per_test.values() if (b or {}).get("calibration_caveat")),
                      None)
        details.append({"model": model, "rows": metrics_rows, "figures": figures, "selection": chosen,
                        "caveat": caveat,
                        "n": {t: fmt_value((per_test.get(t) or {}).get("n")) for t in ("test1", "test2")},
                        "confused": confused})
    return details


# ------------------------------------------------------------------ run metadata
def metas(data: ReportData) -> list[tuple[str, dict]]:
    found = []
    for split, qc in data.qc.items():
        found.append((f"qc/{split}", qc.get("meta") or {}))
    for head, sel in data.selections.items():
        found.append((f"heads/{head}", sel.get("meta") or {}))
    for head, tests in data.metrics.items():
        for test, m in tests.items():
            found.append((f"eval/{head}/{test}", m.get("meta") or {}))
    for kind, items in data.analyses.items():
        for key, a in items.items():
            found.append((f"analysis/{kind}/{key}".rstrip("/"), a.raw.get("meta") or {}))
    return found


def run_metadata(data: ReportData) -> dict[str, Any]:
    blocks = metas(data)
    libraries: dict[str, set[str]] = {}
    devices: dict[str, list[str]] = {}
    seeds: set[str] = set()
    prints: dict[str, dict] = {}
    for name, meta in blocks:
        for lib, version in (meta.get("libraries") or {}).items():
            libraries.setdefault(str(lib), set()).add(str(version))
        if meta.get("device"):
            devices.setdefault(str(meta["device"]), []).append(name)
        if meta.get("seed") is not None:
            seeds.add(str(meta["seed"]))
    for split, manifest in sorted(data.manifests.items()):
        fp = manifest.get("source_fingerprint") or {}
        if fp:
            prints[str(fp.get("path", split))] = {**fp, "split": split, "rows": manifest.get("rows"),
                                                  "dim": manifest.get("dim")}
    stages: dict[str, dict[str, Any]] = {}
    for b in data.benchmarks:
        s = stages.setdefault(b.stage, {"stage": b.stage, "jobs": 0, "seconds": 0.0, "max_seconds": 0.0,
                                        "max_rss_mb": 0.0, "cpu_time": 0.0})
        s["jobs"] += 1
        s["seconds"] += b.seconds or 0.0
        s["max_seconds"] = max(s["max_seconds"], b.seconds or 0.0)
        s["max_rss_mb"] = max(s["max_rss_mb"], b.max_rss_mb or 0.0)
        s["cpu_time"] += b.cpu_time or 0.0
    return {
        "featgap_version": FEATGAP_VERSION,
        "libraries": [(lib, ", ".join(sorted(v))) for lib, v in sorted(libraries.items())],
        "devices": [(dev, len(names)) for dev, names in sorted(devices.items())],
        "seeds": ", ".join(sorted(seeds)) or "–",
        "config_seed": fmt_value(data.config.get("seed")),
        "stages": [{**s, "seconds": fmt_value(round(s["seconds"], 2)), "max_seconds": fmt_value(round(s["max_seconds"], 2)),
                    "max_rss_mb": fmt_value(round(s["max_rss_mb"], 1)), "cpu_time": fmt_value(round(s["cpu_time"], 2))}
                   for s in sorted(stages.values(), key=lambda s: s["stage"])],
        "jobs": [{"stage": b.stage, "job": b.job, "seconds": fmt_value(b.seconds), "max_rss_mb": fmt_value(b.max_rss_mb),
                  "max_vms_mb": fmt_value(b.max_vms_mb)} for b in data.benchmarks],
        "fingerprints": [{"path": p, "split": fp["split"], "rows": fmt_value(fp.get("rows")), "dim": fmt_value(fp.get("dim")),
                          "size": fmt_value(fp.get("size")), "sha": str(fp.get("sha256_sampled", ""))}
                         for p, fp in prints.items()],
        "wall_times": [(name, fmt_value(meta.get("wall_time_s"))) for name, meta in blocks],
    }


def qc_rows(data: ReportData) -> list[dict[str, str]]:
    rows = []
    for split in ("train", "test1", "test2"):
        qc = data.qc.get(split)
        if qc is None:
            continue
        counts = qc.get("per_class_counts") or []
        rows.append({"split": split, "rows": fmt_value(qc.get("rows", sum(counts) if counts else None)),
                     "dim": fmt_value(qc.get("dim")), "classes": fmt_value(qc.get("classes_present")),
                     "per_class": f"{min(counts)}–{max(counts)}" if counts else "–",
                     "violations": fmt_value(len(qc.get("violations") or [])),
                     "nonfinite": fmt_value(qc.get("nonfinite_values"))})
    return rows


# ------------------------------------------------------------------ rendering
def context(data: ReportData, opts: dict, md_dir: Path) -> dict[str, Any]:
    head_line = headline(data)
    summary = summary_rows(data)
    return {
        "title": str(opts["title"]),
        "version": FEATGAP_VERSION,
        "primary": data.primary_head() or "–",
        "headline": head_line,
        "share_text": share_text,
        "summary": summary,
        "real_test": next((r["real_test"] for r in summary if r["real_test"]), ""),
        "references": reference_rows(opts),
        "sections": build_sections(data, head_line, opts, md_dir),
        "models": model_details(data, opts, md_dir),
        "qc": qc_rows(data),
        "run": run_metadata(data),
        "config_yaml": yaml.safe_dump(data.config, sort_keys=False, allow_unicode=True),
        "missing": data.missing,
    }


def render_html(ctx: dict[str, Any], template: str | os.PathLike) -> str:
    import jinja2

    template = Path(template)
    if not template.is_file():
        raise FeatgapError(f"{template}: report template not found")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(template.name).render(**ctx)


def md(text: Any) -> str:
    """Escape a data/config string for Markdown: HTML-escaped (so no tag can render), pipes escaped
    for tables, newlines flattened."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def md_url(path: str) -> str:
    """A relative figure path as a Markdown link target: percent-encoded, so no character of it
    can close the link or open a tag."""
    from urllib.parse import quote

    return quote(path, safe="/._-~")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(ctx: dict[str, Any]) -> str:
    hl: Headline = ctx["headline"]
    out = [f"# {md(ctx['title'])}", "", "## Why is test set 2 harder?", "", md(hl.gap_sentence), ""]
    if hl.expected_sentence:
        out += [md(hl.expected_sentence), ""]
    for i, e in enumerate(hl.ranking, 1):
        out.append(f"{i}. **{md(e.title)}** (`{md(e.cause)}`, {md(e.level)}; share {md(share_text(e))}): "
                   f"{md(e.sentence)}")
    out += ["", md(hl.conclusion), ""]
    if hl.real_sentence:
        out += [f"ReaL labels (not a cause): {md(hl.real_sentence)}", ""]
    if hl.improve_sentence:
        out += [f"What improves test set 2 (not a cause): {md(hl.improve_sentence)}", ""]
    out += ["## Summary", ""]
    real = ctx["real_test"]
    header = ["model", "kind", "test1 top-1", "95% CI", "test2 top-1", "95% CI", "test1 top-5", "test2 top-5",
              "test1 bal. acc", "test2 bal. acc", "gap (points)"] + ([f"{real} ReaL top-1 [95% CI]"] if real else [])
    rows = [[r["model"], r["kind"], r["test1_top1"], r["test1_top1_ci"], r["test2_top1"], r["test2_top1_ci"],
             r["test1_top5"], r["test2_top5"], r["test1_bal"], r["test2_bal"], f"{r['gap']} {r['gap_ci']}".strip()]
            + ([f"{r['real_top1']} {r['real_top1_ci']}".strip()] if real else []) for r in ctx["summary"]]
    rows += [[r["model"], "reference" + (f" ({r['note']})" if r["note"] else ""), r["test1_top1"], "", r["test2_top1"],
              "", "", "", "", "", r["gap"]] + ([""] if real else []) for r in ctx["references"]]
    out += md_table(header, rows) if rows else ["No model was evaluated.", ""]
    for s in ctx["sections"]:
        out += [f"## {md(s.title)}", ""]
        if not s.ran:
            out += ["*Not run* (not enabled in the config or its output is missing).", ""]
            continue
        if s.level:
            out += [f"Evidence: **{md(s.level)}**" + (f": {md(s.note)}" if s.note else ""), ""]
        elif s.note:
            out += [md(s.note), ""]
        out += [f"Verdict ({md(s.subject)}): {md(s.verdict)}", ""]
        if s.numbers:
            out += md_table(["number", "value"], s.numbers)
        for t in s.tables:
            out += [f"**{md(t['title'])}**", ""] + md_table(t["columns"], t["rows"])
        for f in s.figures:
            out += [f"![{md(f.path)}]({md_url(f.md_path)})", ""]
        if s.table:
            out += [f"Table: `{md(s.table)}`", ""]
        for o in s.others:
            out += [f"- {md(o['subject'])}: {md(o['verdict'])}"]
        out += [""] if s.others else []
    out += ["## Models", ""]
    for m in ctx["models"]:
        out += [f"### {md(m['model'])}", ""] + md_table(["metric", "test1", "test2"], m["rows"])
        if m["selection"]:
            out += [f"Selected: {md(m['selection'])}", ""]
        if m["caveat"]:
            out += [f"Caveat (backbone_saw_train): {md(m['caveat'])}", ""]
        for f in m["figures"]:
            out += [f"![{md(f.path)}]({md_url(f.md_path)})", ""]
    run = ctx["run"]
    out += ["## Run metadata", "", f"featgap {md(run['featgap_version'])}; seed (config) {md(run['config_seed'])}; "
            f"seeds in artifacts: {md(run['seeds'])}; devices: "
            + md(", ".join(f"{d} ({n} artifacts)" for d, n in run["devices"]) or "–"), ""]
    out += md_table(["library", "version"], run["libraries"])
    if run["stages"]:
        out += md_table(["stage", "jobs", "wall time s (sum)", "slowest job s", "peak RSS MB", "CPU time s"],
                        [[s["stage"], s["jobs"], s["seconds"], s["max_seconds"], s["max_rss_mb"], s["cpu_time"]]
                         for s in run["stages"]])
    if run["fingerprints"]:
        out += md_table(["input", "split", "rows", "dim", "bytes", "sha256 (first+last MB)"],
                        [[f["path"], f["split"], f["rows"], f["dim"], f["size"], f["sha"]] for f in run["fingerprints"]])
    out += ["### Config", "", "```yaml", ctx["config_yaml"].replace("```", "ʼʼʼ").rstrip(), "```", ""]
    return "\n".join(out)


# ------------------------------------------------------------------ the step
def build_report(*, inputs: Sequence[str | os.PathLike], config: dict[str, Any], template: str | os.PathLike,
                 out_html: str | os.PathLike, out_md: str | os.PathLike,
                 benchmarks: str | os.PathLike | None = None, out_answer: str | os.PathLike | None = None) -> dict[str, Any]:
    """Collect every input, write index.html, report.md and answer.json atomically; return the context."""
    opts = report_options(config)
    data = collect(inputs, config, benchmarks)
    wanted = opts["primary_head"]
    if wanted and wanted not in data.heads() + data.baselines() + list(data.metrics):
        raise FeatgapError(f"config report.primary_head: {wanted!r} is not a configured head or baseline "
                           f"(known: {data.heads() + data.baselines()})")
    out_md = Path(out_md)
    ctx = context(data, opts, out_md.parent)
    page = render_html(ctx, template)
    if re.search(r"<(?:link|script)[^>]+(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page, re.IGNORECASE):
        raise FeatgapError(f"{template}: the page would load an external asset; it must be self-contained")
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    with atomic_path(out_md) as tmp:
        tmp.write_text(render_markdown(ctx), encoding="utf-8")
    if out_answer is not None:
        write_json(out_answer, {**answer_json(ctx["headline"]), "head": data.primary_head()})
    return ctx


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the self-contained HTML report and its Markdown twin.")
    parser.add_argument("inputs", nargs="*", help="metrics/summary/selection/qc/manifest files (the rule's inputs)")
    parser.add_argument("--config", required=True, help="JSON: the whole config used")
    parser.add_argument("--template", required=True, help="Jinja2 HTML template")
    parser.add_argument("--benchmarks", default=None, help="the benchmarks/ folder (globbed for *.tsv)")
    parser.add_argument("--html", required=True, help="results/report/index.html")
    parser.add_argument("--markdown", required=True, help="results/report/report.md")
    parser.add_argument("--answer", default=None, help="results/report/answer.json (the answer for machines)")
    args = parser.parse_args(argv)
    config = parse_json_arg(args.config, "config")
    if not isinstance(config, dict):
        raise FeatgapError("--config: expected a JSON object (the config)")
    ctx = build_report(inputs=args.inputs, config=config, template=args.template, out_html=args.html,
                       out_md=args.markdown, benchmarks=args.benchmarks, out_answer=args.answer)
    hl: Headline = ctx["headline"]
    print(hl.gap_sentence)
    for e in hl.ranking:
        print(f"  {e.level:>8}  {e.cause}: {e.sentence}")
    print(f"wrote {args.html} and {args.markdown}")


if __name__ == "__main__":
    run_cli(main)
