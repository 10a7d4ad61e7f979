"""The answer at the top of the report: why is test set 2 harder?

The report does not judge any analysis: each analysis that stands for a cause writes its own
`evidence` block in summary.json (scripts.lib.analysis.evidence: cause, counterfactual share of the gap with
a 95% interval, level, sentence). This module only reads those blocks for the primary head,
ranks them and writes the answer:

  * the gap and whether it is significant (the gap analysis's own `gap` block); when it is not,
    the answer says so and names no cause above "weak";
  * the expected gap from the reference line (accuracy on the line), when it ran, then the rest
    (observed − expected gap, with its interval: the part beyond what every model shows) and the
    causes with evidence named for it, only when the rest is beyond zero (`rest_of_gap`);
  * the causes ranked by level, then by share of the gap;
  * the unexplained remainder: the gap minus the summed shares of the causes with at least weak
    evidence. Causes can overlap (one image can be atypical *and* in a dropping class), so the
    sum can exceed the gap and the remainder is then negative: it is a lower bound of what no
    cause accounts for, not a decomposition. Its interval combines the gap's and the shares'
    interval half-widths in quadrature (treated as independent: approximate).

Two statements that are not causes follow the ranking: the ReaL re-scoring of test set 1 (how much
of its error rate is label noise rather than model error: evaluate's `real` block and the
real_labels check; label_noise itself is bounded by it) and the improve stage's verdict.

Plain text only: escaping happens where it is rendered. `answer_json` is the same answer for
machines (results/report/answer.json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scripts.lib.analysis.evidence import CAUSES, LEVELS, cap
from scripts.lib.report.collect import Analysis, ReportData

# The analyses whose evidence blocks the answer ranks (its report section has the analysis's name),
# and the cause each measures; the titles are the causes' own (evidence.CAUSES, the one table).
CAUSE_OF = {"mean_shift": "mean_shift", "difficulty": "difficulty", "gap": "class_concentrated",
            "label_noise": "label_noise", "imbalance": "imbalance", "overfit": "overfit"}
HYPOTHESES = {kind: CAUSES[cause] for kind, cause in CAUSE_OF.items()}


@dataclass
class Evidence:
    cause: str
    title: str
    kind: str  # the analysis that wrote the block (its report section id)
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


def read_block(analysis: Analysis) -> Evidence | None:
    raw = analysis.raw.get("evidence")
    if not isinstance(raw, dict) or raw.get("cause") not in CAUSES:
        return None
    share = raw.get("share_of_gap") or {}
    ci = share.get("ci95") or [None, None]
    level = raw.get("level") if raw.get("level") in LEVELS else "none"
    return Evidence(cause=raw["cause"], title=str(raw.get("title") or CAUSES[raw["cause"]]), kind=analysis.kind,
                    level=level, points=_finite(share.get("points")), ci95=(_finite(ci[0]), _finite(ci[1])),
                    sentence=str(raw.get("sentence") or analysis.verdict), estimable=bool(raw.get("estimable", True)))


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


def hypotheses(data: ReportData) -> list[Evidence]:
    """Every cause's block for the primary head, ranked: level, then share (stable on ties)."""
    head = data.primary_head()
    found: list[Evidence] = []
    for kind in HYPOTHESES:
        analysis = _for_head(data, kind, head)
        block = read_block(analysis) if analysis is not None else None
        if block is not None:
            found.append(block)
    gap = gap_block(data, head)
    if gap is not None and gap.significant is False:
        for e in found:
            if LEVELS.index(e.level) > LEVELS.index("weak"):
                e.level, e.capped = cap(e.level, "weak"), True
    order = list(HYPOTHESES)
    return sorted(found, key=lambda e: (-LEVELS.index(e.level), not e.estimable,
                                        -(e.points if e.points is not None else -math.inf), order.index(e.kind)))


def unexplained(gap: GapBlock | None, ranking: list[Evidence]) -> dict[str, Any] | None:
    if gap is None or gap.points is None:
        return None
    counted = [e for e in ranking if e.level != "none" and e.points is not None]
    points = gap.points - sum(e.points for e in counted)  # type: ignore[misc]
    halves = [(gap.ci95[1] - gap.ci95[0]) / 2] if None not in gap.ci95 else []
    halves += [(e.ci95[1] - e.ci95[0]) / 2 for e in counted if None not in e.ci95]  # type: ignore[operator]
    half = math.sqrt(sum(h * h for h in halves)) if halves else None
    return {"points": points, "ci95": [points - half, points + half] if half is not None else [None, None],
            "causes_subtracted": [e.cause for e in counted],
            "method": "gap minus the summed shares of the causes with at least weak evidence (overlapping causes "
                      "can make it negative); interval: half-widths combined in quadrature"}


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
    metrics = data.metrics.get(head or "", {})
    a, _ = top1(metrics, "test1")
    b, _ = top1(metrics, "test2")
    gap = gap_block(data, head)
    if a is not None and b is not None:
        gap_sentence = (f"With the {head} head, top-1 accuracy falls from {a:.2%} on test set 1 to {b:.2%} on "
                        f"test set 2: a gap of {(a - b) * 100:.1f} points")
        if gap is not None and gap.points is not None:
            gap_sentence += (f" (per class {gap.points:.1f}, 95% interval {_interval(gap.ci95)}, classes resampled; "
                             + ("significant" if gap.significant else "not significant")
                             + (f", stratified permutation p={gap.p:.2g}" if gap.p is not None else "") + ")")
        gap_sentence += "."
    else:
        gap_sentence = "The evaluation did not run, so the size of the gap is unknown."
    reference = reference_line(data, head)
    if reference is not None and None not in (reference.get("expected_test2_top1"),
                                              _finite(reference.get("effective_robustness"))):
        reference["rest"] = rest_of_gap(reference, ranking)
    expected = _expected_sentence(reference, ranking) if reference and "rest" in reference else ""
    rest = unexplained(gap, ranking)
    conclusion = _conclusion(gap, ranking, rest)
    real = real_labels(data, head)
    improve = data.improve if improve_enabled(data) else None
    return Headline(gap_sentence=gap_sentence, ranking=ranking, conclusion=conclusion, expected_sentence=expected,
                    gap=gap, unexplained=rest, reference=reference, real=real, real_sentence=_real_sentence(head, real),
                    improve_sentence=str(improve.get("verdict") or "") if improve else "", improve=improve)


def rest_of_gap(reference: dict[str, Any], ranking: list[Evidence]) -> dict[str, Any]:
    """The part of the observed gap beyond what every reference model shows (observed − expected gap
    = −effective robustness, with its interval) and what the analyses attribute to it.

    The analyses' shares are counterfactual points of the *whole* observed gap: they cannot tell the
    expected part from the rest. So a cause is named for the rest only when the rest itself is
    beyond zero, and the part of the rest no cause accounts for is a lower bound, as `unexplained`."""
    er, ci = reference.get("effective_robustness"), reference.get("prediction_interval") or [None, None]
    points = -er if isinstance(er, (int, float)) else None
    ci95 = [-ci[1], -ci[0]] if None not in ci else [None, None]
    beyond = None if ci95[0] is None else "beyond" if ci95[0] > 0 else "below" if ci95[1] < 0 else "within"
    causes = [e for e in ranking if e.level != "none" and e.points is not None] if beyond == "beyond" else []
    left = unexplained(GapBlock(points=points, ci95=(ci95[0], ci95[1]), significant=None, p=None), causes)
    return {"points": points, "ci95": ci95, "line": beyond, "causes": [e.cause for e in causes],
            "unexplained": {k: left[k] for k in ("points", "ci95")} if left and causes else None}


def _expected_sentence(reference: dict[str, Any], ranking: list[Evidence]) -> str:
    """The expected gap, then the rest (observed − expected) and what the analyses attribute it to."""
    rest = reference["rest"]
    text = (f"Over {reference['models']} reference models on one probit line, a model at "
            f"{reference['test1_top1']:.2f}% on test set 1 is expected at {reference['expected_test2_top1']:.2f}% on "
            f"test set 2: an expected gap of {reference['expected_gap']:.1f} points, which every such model shows. "
            f"The rest, the observed gap minus the expected one, is {rest['points']:.1f} points (95% interval "
            f"{_interval(rest['ci95'])})")
    if rest["line"] == "within":
        return text + (": no evidence of a gap beyond what every model shows, so there is no rest for the analyses "
                       "to attribute; the causes below describe where the whole gap falls.")
    if rest["line"] == "below":
        return text + (": this head loses less than the line predicts, so there is no rest to attribute; the causes "
                       "below describe where the whole gap falls.")
    if rest["line"] is None:
        return text + "; without its interval, no cause is attributed to it."
    if not rest["causes"]:
        return text + ": no analysis finds evidence of a cause for it."
    named = [e for e in ranking if e.cause in rest["causes"]][:3]
    left = rest["unexplained"] or {}
    return text + (". The analyses attribute it first to "
                   + "; then ".join(f"{e.title.lower()}: {e.level} evidence, {e.points:.1f} points "
                                    f"({_interval(e.ci95)})" for e in named)
                   + ". These shares are points of the whole observed gap, which no analysis can split into its "
                   f"expected part and the rest; the rest minus them: {left.get('points', math.nan):.1f} points "
                   f"(95% interval {_interval(left.get('ci95'))}).")


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


def _conclusion(gap: GapBlock | None, ranking: list[Evidence], rest: dict | None) -> str:
    if not ranking:
        return "No analysis wrote an evidence block, so no cause can be judged."
    lead = ""
    if gap is not None and gap.significant is False:
        lead = "The gap is not significant, so no cause is named above weak. "
    named = [e for e in ranking if e.level in ("strong", "moderate")]
    if named:
        parts = [f"{e.title.lower()} ({e.points:.1f} points, {_interval(e.ci95)})" for e in named[:3]]
        text = "The gap is explained first by " + "; then ".join(parts) + "."
    elif any(e.level == "weak" for e in ranking):
        first = next(e for e in ranking if e.level == "weak")
        text = f"No cause is strongly supported; the best candidate is {first.title.lower()}."
    else:
        text = "No evidence that any of the causes tested explains the gap."
    if rest is not None and rest["points"] is not None:
        text += f" Unexplained: {rest['points']:.1f} points (95% interval {_interval(rest['ci95'])})."
    return lead + text


def answer_json(hl: Headline) -> dict[str, Any]:
    """The answer for machines (percent and points)."""
    gap = hl.gap
    out: dict[str, Any] = {
        "gap": {"points": gap.points if gap else None, "ci95": list(gap.ci95) if gap else [None, None],
                "significant": gap.significant if gap else None},
        "causes": [{"id": e.cause, "title": e.title, "share_of_gap": e.points, "ci95": list(e.ci95),
                    "evidence": e.level, "sentence": e.sentence, "estimable": e.estimable} for e in hl.ranking],
        "unexplained": {"points": (hl.unexplained or {}).get("points"),
                        "ci95": (hl.unexplained or {}).get("ci95", [None, None])},
    }
    if hl.reference is not None:
        out["reference_line"] = hl.reference
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
