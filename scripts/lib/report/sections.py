"""The report's sections: the decomposition of the gap first, the improve stage, then the
descriptive analyses, each from the analysis's own summary (verdict, numbers, tables, figures)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.lib.report.answer import DECOMPOSITION, Headline, improve_enabled, improve_ranking
from scripts.lib.report.collect import Analysis, ReportData
from scripts.lib.report.format import Figure, embed, fmt_value

# Summaries are written with sorted keys; tables read better with identifiers first.
LEADING_COLUMNS = ["rank", "class", "name", "feature", "cluster", "train_rows", "n_features", "acc_test1",
                   "acc_test2", "drop", "category", "path", "label", "label_name", "pred", "pred_name", "real",
                   "real_names", "confidence"]
# Every section's title, in one table (an analysis added later is titled by its name until it has one).
SECTION_TITLES = {DECOMPOSITION: "The gap, term by term (a Shapley decomposition over its mechanisms)",
                  "gap": "The gap per class: which classes carry the drop",
                  "mean_shift": "Re-centring test set 2 on test set 1's mean",
                  "difficulty": "How typical the test images are",
                  "label_noise": "Labels the head confidently disagrees with",
                  "imbalance": "Class imbalance in the training set",
                  "overfit": "Overfitting of the head",
                  "shift": "Feature shift between the test sets (detectable differences)",
                  "misclass": "Features of the misclassified samples",
                  "misclass_compare": "Misclassification signature: test set 2 vs test set 1",
                  "embedding": "Embedding views", "reference_line": "Accuracy on the line: the expected gap",
                  "train_reference": "Train reference (class means)",
                  "real_labels": "ReaL labels: test set 1's errors re-judged",
                  "improve": "What improves test set 2?"}
# Sections after the ranked causes (and the improve stage), in this order; anything else follows
# alphabetically.
DESCRIPTIVE = ("reference_line", "gap", "mean_shift", "difficulty", "label_noise", "real_labels", "imbalance", "overfit",
               "shift", "misclass_compare", "misclass", "embedding")


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
    """The decomposition's section first (the answer's conclusion as its note), the improve stage,
    then the descriptive analyses, then anything added later."""
    head = data.primary_head() or ""
    ranked = {DECOMPOSITION: head_line} if head_line.decomposition is not None else {}
    order = list(ranked) + ["improve"] + [k for k in DESCRIPTIVE if k not in ranked]
    order += sorted(k for k in data.analyses if k not in order)
    sections = []
    for kind in order:
        if kind == "improve":
            if improve_enabled(data):  # absent when the stage is off
                sections.append(improve_section(data, md_dir))
            continue
        items = list(data.analyses.get(kind, {}).values())
        if kind not in ranked and kind not in data.declared:
            continue  # an analysis this config does not run (switched off) is simply absent
        prefer = (f"{head}/test2", head, "") if kind == "misclass" else (head, "")
        section = analysis_section(kind, items, pick(items, *prefer), opts, md_dir)
        if kind in ranked and section.ran:  # the answer's conclusion, then how the terms are computed
            section.note = f"{head_line.conclusion} Method: {(head_line.decomposition or {}).get('method', '')}"
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
        flag = str(v.get("flag") or "–")  # the stage's own judgement (scripts.improve.improve_compare.flag), never re-made here
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
    figures = [embed(str(f), md_dir) for f in summary.get("figures") or []]
    numbers = [("baseline (primary head)", str(summary.get("baseline", "–"))),
               ("baseline test 1 top-1 %", _pct_points(summary.get("baseline_test1_top1"))),
               ("baseline test 2 top-1 %", _pct_points(summary.get("baseline_test2_top1"))),
               ("interval", str(method.get("interval", "–"))), ("test", str(method.get("test", "–")))]
    chosen = sorted({str(v["hyperparameters"]) for v in summary.get("variants") or []
                     if v.get("kind") == "retrain" and v.get("hyperparameters")})
    if chosen:  # how the retrained variants got their lr, weight decay, epochs (never from a test set)
        numbers.append(("retrained variants' hyperparameters", "; ".join(chosen)))
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
                   figures=figures, table=summary.get("table"),
                   note="Not a cause of the gap: what the configured variants of the primary head change on both "
                        "test sets, compared on the same images.")
