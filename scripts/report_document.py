"""The report's document model: one context (sections, tables, figures, run metadata) built from
the collected inputs (scripts.report_collect) and the evidence ranking (scripts.report_evidence).
Every value is plain text or a number, not yet escaped: scripts.report_render renders this one
context with both templates (HTML and Markdown), each escaping for its own format.
"""
from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scripts.featio import FEATGAP_VERSION
from scripts.report_collect import Analysis, ReportData
from scripts.report_evidence import (
    HYPOTHESES,
    Headline,
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


# ------------------------------------------------------------------ the document
def document(data: ReportData, opts: dict, md_dir: Path) -> dict[str, Any]:
    """The one context both templates render (figure paths for the Markdown relative to md_dir)."""
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
