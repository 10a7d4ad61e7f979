"""The answer at the top of the report: why is test set 2 harder?

The report judges nothing itself; it reads and words what the analyses wrote for the primary head:

  * first, when the reference line ran (accuracy on the line), how much of the gap every model of
    this accuracy shows (the expected gap) and whether this head's gap is beyond it: the rest,
    observed − expected gap, with the line's 95% prediction interval (scripts/analysis/reference_line.py);
  * the gap and whether it is significant (the gap analysis's own `gap` block); when it is not, the
    answer says "no evidence of a gap" and names no term above "weak";
  * the decomposition (scripts/analysis/decomposition.py): one Shapley attribution of the gap over
    its mechanisms, whose terms plus the method's residual add up to the gap exactly. Each term has
    its points, a 95% interval (classes resampled) and a level from the one rule
    (scripts/lib/analysis/evidence.level_for). When the rest lies within the line, the terms are
    worded as *where the common gap falls*, not as its cause, and the literature's account of the
    common part (the selection-frequency matching of ImageNetV2's replication) is named;
  * two statements that are not parts of the gap: the ReaL re-scoring of test set 1 and the improve
    stage's verdict. Descriptive analyses (which classes carry the drop, feature tests, imbalance,
    overfitting) stay in their own sections: nothing of theirs is subtracted from the gap.

Plain text only: escaping happens where it is rendered. `answer_json` is the same answer for
machines (results/report/answer.json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scripts.lib.analysis.evidence import CAUSES, LEVELS, cap
from scripts.lib.report.collect import Analysis, ReportData

# The analysis whose terms the answer reports (its report section and key).
DECOMPOSITION = "decomposition"
# The literature's account of the part of the ImageNet → ImageNetV2 gap every model shows.
LITERATURE = ("The literature's account of the part every model shows: ImageNetV2 replicated ImageNet's "
              "collection, matching the annotators' selection frequency of each image, and the statistical bias "
              "of that matching accounts for most of the gap every model shows (Engstrom et al. 2020, "
              "\"Identifying statistical bias in dataset replication\": 11.7 points, 3.6 after correcting it; "
              "Recht et al. 2019, \"Do ImageNet classifiers generalize to ImageNet?\"; Miller et al. 2021, "
              "\"Accuracy on the line\").")


@dataclass
class Evidence:
    """One term of the decomposition as the answer shows it."""

    cause: str  # the term id (evidence.CAUSES)
    title: str
    kind: str  # the analysis that wrote it (its report section id)
    level: str  # strong | moderate | weak | none
    points: float | None
    ci95: tuple[float | None, float | None]
    sentence: str
    estimable: bool = True
    capped: bool = False  # lowered to weak because the gap itself is not significant

    @property
    def hypothesis(self) -> str:  # the section anchor
        return self.kind


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _for_head(data: ReportData, kind: str, head: str | None) -> Analysis | None:
    return (data.analysis(kind, head) if head else None) or data.analysis(kind, "") or (
        data.for_head(kind, head)[0] if data.for_head(kind, head) else None)


@dataclass
class GapBlock:
    points: float | None
    ci95: tuple[float | None, float | None]
    significant: bool | None
    p: float | None


def gap_block(data: ReportData, head: str | None) -> GapBlock | None:
    analysis = _for_head(data, "gap", head)
    raw = (analysis.raw.get("gap") if analysis else None) or None
    if not isinstance(raw, dict):
        return None
    ci = raw.get("ci95") or [None, None]
    sig = raw.get("significant")
    return GapBlock(points=_finite(raw.get("points")), ci95=(_finite(ci[0]), _finite(ci[1])),
                    significant=sig if isinstance(sig, bool) else None, p=_finite(raw.get("p")))


def decomposition_block(data: ReportData, head: str | None) -> dict[str, Any] | None:
    analysis = _for_head(data, DECOMPOSITION, head)
    block = analysis.raw.get("decomposition") if analysis is not None else None
    return block if isinstance(block, dict) and isinstance(block.get("terms"), list) else None


def hypotheses(data: ReportData) -> list[Evidence]:
    """The decomposition's terms for the primary head, ranked: level, then points (stable on ties).
    When the gap is not significant, no term is above weak."""
    head = data.primary_head()
    block = decomposition_block(data, head)
    found: list[Evidence] = []
    for raw in (block or {}).get("terms", []):
        if not isinstance(raw, dict) or raw.get("id") not in CAUSES:
            continue
        ci = raw.get("ci95") or [None, None]
        found.append(Evidence(cause=raw["id"], title=str(raw.get("title") or CAUSES[raw["id"]]), kind=DECOMPOSITION,
                              level=raw.get("level") if raw.get("level") in LEVELS else "none",
                              points=_finite(raw.get("points")), ci95=(_finite(ci[0]), _finite(ci[1])),
                              sentence=str(raw.get("sentence") or ""), estimable=_finite(raw.get("points")) is not None))
    gap = gap_block(data, head)
    if gap is not None and gap.significant is False:
        for e in found:
            if LEVELS.index(e.level) > LEVELS.index("weak"):
                e.level, e.capped = cap(e.level, "weak"), True
    order = list(CAUSES)
    return sorted(found, key=lambda e: (-LEVELS.index(e.level), not e.estimable,
                                        -(e.points if e.points is not None else -math.inf), order.index(e.cause)))


def unexplained(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """The decomposition's residual: what is left of the gap with every mechanism reverted."""
    residual = (block or {}).get("residual")
    if not isinstance(residual, dict):
        return None
    ci = residual.get("ci95") or [None, None]
    return {"points": _finite(residual.get("points")), "ci95": [_finite(ci[0]), _finite(ci[1])],
            "method": "the decomposition's residual: top-1 on test set 1 minus top-1 on test set 2 with every "
                      "mechanism taken back to test-1 level"}


def reference_line(data: ReportData, head: str | None) -> dict[str, Any] | None:
    analysis = data.analysis("reference_line", "") or data.analysis("reference_line")
    if analysis is None:
        return None
    heads = analysis.raw.get("heads") or {}
    row = heads.get(head) if head else None
    line = analysis.raw.get("line") or {}
    if not isinstance(row, dict):
        return None
    return {"models": line.get("models"), "slope": line.get("slope"), "intercept": line.get("intercept"),
            "residual_sd_points": line.get("residual_sd_points"), "filter": line.get("filter"), "head": head,
            "test1_top1": row.get("test1_top1"), "test2_top1": row.get("test2_top1"),
            "expected_test2_top1": row.get("expected_test2_top1"), "expected_gap": row.get("expected_gap"),
            "effective_robustness": row.get("effective_robustness"), "ci95": row.get("ci95"),
            "prediction_interval": row.get("prediction_interval") or row.get("ci95"),
            "thresholds": row.get("thresholds") or [], "calibration": line.get("calibration") or []}


# ------------------------------------------------------------------ the headline
@dataclass
class Headline:
    gap_sentence: str
    ranking: list[Evidence]
    conclusion: str
    expected_sentence: str = ""
    gap: GapBlock | None = None
    unexplained: dict[str, Any] | None = None
    reference: dict[str, Any] | None = field(default=None)
    real: dict[str, Any] | None = None
    real_sentence: str = ""
    improve_sentence: str = ""
    improve: dict[str, Any] | None = None
    decomposition: dict[str, Any] | None = None
    figure: str | None = None  # the decomposition's waterfall (a path; embedded by the document)
    literature_sentence: str = ""


def top1(metrics: dict, test: str) -> tuple[float | None, tuple[float, float] | None]:
    block = metrics.get(test) or {}
    value = (block.get("metrics") or {}).get("top1")
    ci = (block.get("ci95") or {}).get("top1")
    return value, (tuple(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None)


def gap_interval(m1: dict, m2: dict) -> tuple[float, float, float] | None:
    """Top-1 gap test1 − test2 with an approximate 95% interval (independent test sets: the
    half-widths of the two bootstrap intervals combine in quadrature)."""
    (a, ca), (b, cb) = top1({"t": m1}, "t"), top1({"t": m2}, "t")
    if a is None or b is None:
        return None
    gap = a - b
    if ca is None or cb is None:
        return gap, math.nan, math.nan
    half = math.hypot((ca[1] - ca[0]) / 2, (cb[1] - cb[0]) / 2)
    return gap, gap - half, gap + half


def _interval(ci) -> str:
    return f"{ci[0]:.1f} to {ci[1]:.1f}" if ci and None not in ci else "n/a"


def real_labels(data: ReportData, head: str | None) -> dict[str, Any] | None:
    """The ReaL re-scoring of the head (evaluate's `real` block) and its check (real_labels/{head})."""
    for test, m in sorted(data.metrics.get(head or "", {}).items()):
        block = m.get("real")
        if not isinstance(block, dict) or _finite(block.get("top1")) is None:
            continue
        check = _for_head(data, "real_labels", head)
        raw = check.raw if check is not None else {}
        return {"test": test, "top1": block.get("top1"), "ci95": (block.get("ci95") or {}).get("top1"),
                "top1_original": block.get("top1_original"), "n_images": block.get("n_images"),
                "n_with_real": block.get("n_with_real"), "errors": block.get("errors") or {},
                "enrichment": raw.get("enrichment"), "calibration": raw.get("calibration")}
    return None


def _real_sentence(head: str | None, real: dict[str, Any] | None) -> str:
    if not real:
        return ""
    n, errors = real["n_images"] or 0, real["errors"]
    ci = real["ci95"]
    text = (f"With ReaL labels ({real['n_with_real']:,} of {n:,} {real['test']} images have a valid one), the {head} "
            f"head scores {100 * real['top1']:.2f}% top-1"
            + (f" (95% interval {100 * ci[0]:.2f} to {100 * ci[1]:.2f}, images resampled within class)"
               if ci and None not in ci else "")
            + f" against {100 * real['top1_original']:.2f}% with the original labels on the same images.")
    if n and errors.get("errors") is not None:
        pts = {k: 100 * (errors.get(k) or 0) / n for k in ("errors", "in_real", "no_label", "genuine")}
        text += (f" Of its {pts['errors']:.1f} points of errors, {pts['in_real']:.1f} are label noise (the prediction "
                 f"is in the ReaL set), {pts['no_label']:.1f} images with no valid label and {pts['genuine']:.1f} "
                 "genuine model errors.")
    enrich = real.get("enrichment") or {}
    ratio, eci = _finite(enrich.get("ratio")), enrich.get("ratio_ci95") or [None, None]
    if ratio is not None and None not in eci:
        text += (f" Confident disagreements are {'enriched' if eci[0] > 1 else 'not shown to be enriched'} for label "
                 f"noise (×{ratio:.2f}, 95% interval {eci[0]:.2f} to {eci[1]:.2f}, classes resampled); the label-noise "
                 "share of test set 2 is bounded by this calibration.")
    return text


def headline(data: ReportData) -> Headline:
    head = data.primary_head()
    ranking = hypotheses(data)
    block = decomposition_block(data, head)
    metrics = data.metrics.get(head or "", {})
    a, _ = top1(metrics, "test1")
    b, _ = top1(metrics, "test2")
    gap = gap_block(data, head)
    if a is not None and b is not None:
        gap_sentence = (f"With the {head} head, top-1 accuracy falls from {a:.2%} on test set 1 to {b:.2%} on "
                        f"test set 2: a gap of {(a - b) * 100:.1f} points")
        if gap is not None and gap.points is not None:
            gap_sentence += (f" (per class {gap.points:.1f}, 95% interval {_interval(gap.ci95)}, classes resampled; "
                             + ("significant" if gap.significant else "no evidence of a gap")
                             + (f", stratified permutation p={gap.p:.2g}" if gap.p is not None else "") + ")")
        gap_sentence += "."
    else:
        gap_sentence = "The evaluation did not run, so the size of the gap is unknown."
    reference = reference_line(data, head)
    if reference is not None and None not in (reference.get("expected_test2_top1"),
                                              _finite(reference.get("effective_robustness"))):
        reference["rest"] = rest_of_gap(reference)
    expected = _expected_sentence(reference) if reference and "rest" in reference else ""
    residual = unexplained(block)
    conclusion = _conclusion(gap, ranking, residual, block, reference)
    real = real_labels(data, head)
    improve = data.improve if improve_enabled(data) else None
    figures = (_for_head(data, DECOMPOSITION, head).figures if block is not None else []) or [None]
    return Headline(gap_sentence=gap_sentence, ranking=ranking, conclusion=conclusion, expected_sentence=expected,
                    gap=gap, unexplained=residual, reference=reference, real=real,
                    real_sentence=_real_sentence(head, real),
                    improve_sentence=str(improve.get("verdict") or "") if improve else "", improve=improve,
                    decomposition=block, figure=figures[0], literature_sentence=LITERATURE if expected else "")


def rest_of_gap(reference: dict[str, Any]) -> dict[str, Any]:
    """The part of the observed gap beyond what every reference model shows: observed − expected gap
    (= −effective robustness) with the line's 95% prediction interval, and where it lies."""
    er, ci = reference.get("effective_robustness"), reference.get("prediction_interval") or [None, None]
    points = -er if isinstance(er, (int, float)) else None
    ci95 = [-ci[1], -ci[0]] if None not in ci else [None, None]
    beyond = None if ci95[0] is None else "beyond" if ci95[0] > 0 else "below" if ci95[1] < 0 else "within"
    return {"points": points, "ci95": ci95, "line": beyond}


def _thresholds_text(reference: dict[str, Any]) -> str:
    rows = [r for r in reference.get("thresholds") or [] if _finite(r.get("expected_test2_top1")) is not None]
    if len(rows) < 2:
        return ""
    values = [r["expected_test2_top1"] for r in rows]
    cuts = [r["min_test1_top1"] for r in rows]
    return (f" (lines over models above {min(cuts):g}% to {max(cuts):g}% test-1 top-1 put it at {min(values):.2f}% "
            f"to {max(values):.2f}%)")


def _expected_sentence(reference: dict[str, Any]) -> str:
    """First sentence of the answer: how much of the gap every model shows, and whether this head's
    gap is beyond it."""
    rest = reference["rest"]
    text = (f"Every model shows most of such a gap: over {reference['models']} reference models on one probit line, "
            f"a model at {reference['test1_top1']:.2f}% on test set 1 is expected at "
            f"{reference['expected_test2_top1']:.2f}% on test set 2{_thresholds_text(reference)}, an expected gap of "
            f"{reference['expected_gap']:.1f} points. The rest of this head's gap, the observed gap minus the expected "
            f"one, is {rest['points']:.1f} points (95% prediction interval {_interval(rest['ci95'])})")
    if rest["line"] == "within":
        return text + ": no evidence that this head loses more than every model does."
    if rest["line"] == "below":
        return text + ": this head loses less than the line predicts."
    if rest["line"] is None:
        return text + "."
    return text + ": beyond what every model shows."


def improve_ranking(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The improve stage's variants ranked by their test-2 gain (largest first; stable on ties)."""
    variants = [v for v in summary.get("variants") or [] if isinstance(v, dict)]

    def gain(v: dict[str, Any]) -> float:
        points = _finite((v.get("delta_test2") or {}).get("points"))
        return -math.inf if points is None else points

    return sorted(variants, key=lambda v: -gain(v))


def improve_enabled(data: ReportData) -> bool:
    """The rule passed the improve stage's summary (the stage is on in this config)."""
    return "improve" in data.declared


def _term_text(e: Evidence) -> str:
    return f"{e.title.lower()}: {e.points:.1f} points ({_interval(e.ci95)}, {e.level} evidence)"


def _conclusion(gap: GapBlock | None, ranking: list[Evidence], residual: dict | None, block: dict | None,
                reference: dict | None) -> str:
    if block is None:
        return "The decomposition did not run, so the gap is not split into its mechanisms."
    lead = ""
    if gap is not None and gap.significant is False:
        lead = "No evidence of a gap (the stratified permutation test), so no term is named above weak. "
    named = [e for e in ranking if e.level != "none" and e.points is not None]
    common = (reference or {}).get("rest", {}).get("line") in ("within", "below")
    if not named:
        text = "No mechanism accounts for a part of the gap with evidence: every term's interval contains 0."
    elif common:
        text = ("Where the common gap falls (a description of the gap every model shows, not its cause): "
                + "; ".join(_term_text(e) for e in named[:4]) + ".")
    else:
        text = "Of the gap, " + "; ".join(_term_text(e).replace(":", " accounts for", 1) for e in named[:4]) + "."
    quiet = [e.title.lower() for e in ranking if e.level == "none"]
    if quiet:
        text += " No evidence for " + ", ".join(quiet) + "."
    if residual is not None and residual["points"] is not None:
        text += (f" The decomposition's residual, what no mechanism accounts for: {residual['points']:.1f} points "
                 f"(95% interval {_interval(residual['ci95'])}); the terms and the residual add up to the gap.")
    return lead + text


def answer_json(hl: Headline) -> dict[str, Any]:
    """The answer for machines (percent and points): `causes` are the decomposition's terms, which
    with `unexplained` (its residual) add up to `gap.points` (the decomposition's top-1 gap)."""
    block = hl.decomposition or {}
    gap = hl.gap
    dgap = block.get("gap") if isinstance(block.get("gap"), dict) else None
    out: dict[str, Any] = {
        "gap": {"points": dgap["points"] if dgap else (gap.points if gap else None),
                "ci95": list(dgap.get("ci95") or [None, None]) if dgap else (list(gap.ci95) if gap else [None, None]),
                "significant": gap.significant if gap else None},
        "method": block.get("method"),
        "unit": block.get("unit"),
        "causes": [{"id": e.cause, "title": e.title, "share_of_gap": e.points, "ci95": list(e.ci95),
                    "evidence": e.level, "sentence": e.sentence} for e in hl.ranking],
        "unexplained": {"points": (hl.unexplained or {}).get("points", 0.0 if not hl.ranking else None),
                        "ci95": (hl.unexplained or {}).get("ci95", [None, None])},
    }
    if hl.reference is not None:
        ref = hl.reference
        out["reference_line"] = {**ref, "expected": ref.get("expected_test2_top1"),
                                 "prediction_interval": ref.get("prediction_interval"),
                                 "thresholds": ref.get("thresholds"), "rest": ref.get("rest")}
    if hl.real is not None:
        out["real_labels"] = {k: hl.real[k] for k in ("test", "top1", "ci95", "top1_original", "n_with_real", "errors",
                                                     "enrichment", "calibration")}
    if hl.improve is not None:
        out["improve"] = {"verdict": hl.improve_sentence, "baseline": hl.improve.get("baseline"), "variants": [
            {"name": v.get("name"), "kind": v.get("kind"),
             "test2_change_points": (v.get("delta_test2") or {}).get("points"),
             "test2_ci95": (v.get("delta_test2") or {}).get("ci95"),
             "test1_change_points": (v.get("delta_test1") or {}).get("points"),
             "test1_ci95": (v.get("delta_test1") or {}).get("ci95"),
             "improves_test2": v.get("improves_test2"), "hurts_test2": v.get("hurts_test2"),
             "hurts_test1": v.get("hurts_test1"),
             "gains_test2_by_losing_test1": v.get("gains_test2_by_losing_test1"), "flag": v.get("flag")}
            for v in improve_ranking(hl.improve)]}
    return out
