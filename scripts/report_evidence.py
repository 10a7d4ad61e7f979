"""The answer at the top of the report: why is test set 2 harder?

Each hypothesis (feature shift, class imbalance, overfitting, misclassification features) gets an
`Evidence`: a level (strong / moderate / weak / none / unclear), a score for ranking and one
sentence with the numbers behind it, read from the analyses' summary.json `numbers`. An analysis
may state its own reading as `numbers.evidence` ("strong" | "moderate" | "weak" | "none") or
`numbers.supported` (bool); otherwise the rules below read the known keys. An analysis that did
not run is "not run" and ranks last. Plain text only: escaping happens where it is rendered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scripts.report_collect import Analysis, ReportData

LEVELS = {"strong": 3, "moderate": 2, "weak": 1, "none": 0}
HYPOTHESES = {
    "shift": "Feature shift between the test sets",
    "imbalance": "Class imbalance in the training set",
    "overfit": "Overfitting of the head",
    "misclass": "Features of the misclassified samples",
}


@dataclass
class Evidence:
    hypothesis: str  # shift | imbalance | overfit | misclass
    title: str
    level: str  # strong | moderate | weak | none | unclear | not run
    score: float  # for ranking; higher = more support
    sentence: str


def num(numbers: dict[str, Any], *keys: str) -> float | None:
    """The first of `keys` that holds a finite number."""
    for key in keys:
        value = numbers.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def interval(numbers: dict[str, Any], key: str) -> tuple[float, float] | None:
    value = numbers.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    return None


def stated(analysis: Analysis | None) -> str | None:
    """The analysis's own reading of its evidence, when it states one."""
    if analysis is None:
        return None
    for source in (analysis.numbers, analysis.raw):
        level = source.get("evidence")
        if isinstance(level, str) and level.lower() in LEVELS:
            return level.lower()
        if isinstance(source.get("supported"), bool):
            return "moderate" if source["supported"] else "none"
    return None


def _level(score: float) -> str:
    return "strong" if score >= 2.5 else "moderate" if score >= 1.5 else "weak" if score >= 0.5 else "none"


# ------------------------------------------------------------------ per hypothesis
def shift_evidence(shift: Analysis | None, adapt: Analysis | None) -> Evidence:
    title = HYPOTHESES["shift"]
    if shift is None and adapt is None:
        return Evidence("shift", title, "not run", -1.0, "The shift analysis did not run.")
    parts, score = [], 0.0
    if shift is not None:
        n = shift.numbers
        auc, ci = num(n, "domain_auc"), interval(n, "domain_auc_ci95")
        n_sig, d = num(n, "n_significant"), num(n, "n_features")
        if auc is not None:
            separable = ci is not None and ci[0] > 0.5
            parts.append(f"a domain classifier tells the test sets apart with AUC {auc:.3f}"
                         + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                         + ("" if separable else " (not distinguishable)"))
            score += (1.5 if auc >= 0.8 else 1.0 if auc >= 0.6 else 0.5) if separable else 0.0
        if n_sig is not None and d:
            parts.append(f"{n_sig:.0f} of {d:.0f} features have shifted means")
    if adapt is not None:
        a = adapt.numbers
        closed = num(a, "gap_closed_share_own_mean_std", "gap_closed_share_own_mean")
        before, after = num(a, "gap_train_standardisation"), num(a, "gap_own_mean_std_test2_only")
        if closed is not None:
            text = ("re-standardising test set 2 with its own mean/std "
                    + (f"closes {closed:.0%} of the gap" if closed > 0.005 else "does not close the gap"))
            if before is not None and after is not None:
                text += f" ({before * 100:.1f} → {after * 100:.1f} points)"
            parts.append(text)
            if closed < 0.2:
                text += ": the shift is not a simple change of feature means and scales"
            parts[-1] = text
            score += 1.5 if closed >= 0.5 else 1.0 if closed >= 0.2 else 0.5 if closed >= 0.05 else 0.0
    own = stated(shift)
    if own is not None:
        score = float(LEVELS[own])
    sentence = ("; ".join(parts) + ".") if parts else (shift or adapt).verdict  # type: ignore[union-attr]
    return Evidence("shift", title, _level(score), score, sentence[:1].upper() + sentence[1:])


def generic_evidence(hypothesis: str, analysis: Analysis | None, rules) -> Evidence:
    title = HYPOTHESES[hypothesis]
    if analysis is None:
        return Evidence(hypothesis, title, "not run", -1.0, f"The {hypothesis} analysis did not run.")
    own = stated(analysis)
    found = rules(analysis.numbers) if rules else None
    if own is not None:
        score = float(LEVELS[own])
        sentence = found[1] if found else analysis.verdict
    elif found is not None:
        score, sentence = found
    else:
        return Evidence(hypothesis, title, "unclear", 0.25, analysis.verdict)
    return Evidence(hypothesis, title, _level(score), score, sentence)


def _pair(numbers: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    """A {rho, p} block (imbalance's spearman_*) as (rho, p)."""
    block = numbers.get(key)
    if isinstance(block, dict):
        return num(block, "rho", "r", "statistic"), num(block, "p", "pvalue", "p_value")
    return None, None


def _imbalance_rule(numbers: dict[str, Any]):
    """Imbalance explains the gap if classes with fewer training rows drop more. The imbalance
    analysis names the test its reading rests on (`primary_test`, `primary_p`, `primary_effect`:
    positive when fewer rows go with a larger drop): Spearman ρ of rows vs drop when a trend is
    estimable, else full vs reduced classes. Older summaries: Spearman ρ of rows vs drop."""
    alpha = num(numbers, "alpha") or 0.05
    lo, hi = num(numbers, "train_rows_min"), num(numbers, "train_rows_max")
    rows = f"training rows per class range {lo:.0f}–{hi:.0f}; " if lo is not None and hi is not None else ""
    if "primary_test" in numbers:
        p, effect = num(numbers, "primary_p"), num(numbers, "primary_effect")
        if p is None or effect is None:
            return None  # not estimable: the verdict says why
        supports = p < alpha and effect > 0
        text = f"{rows}{numbers['primary_test']}: effect {effect:+.3f} (p={p:.2g})"
    else:
        rho, p = _pair(numbers, "spearman_drop")
        if rho is None:
            return None
        supports = p is not None and p < alpha and rho < 0
        effect = -rho
        text = f"{rows}Spearman ρ between training rows and the per-class drop is {rho:+.2f}" + (
            f" (p={p:.2g})" if p is not None else "")
    score = (2.0 if abs(effect) >= 0.3 else 1.0) if supports else 0.0
    text += (": classes with fewer training rows drop more." if supports
             else ": no evidence that classes with fewer training rows drop more.")
    return score, text[:1].upper() + text[1:]


def _overfit_rule(numbers: dict[str, Any]):
    """Overfitting explains the gap only if the head loses as much from train to holdout as from
    test 1 to test 2; a test gap far beyond the train–holdout gap is a property of test set 2."""
    train, holdout = num(numbers, "train_acc"), num(numbers, "holdout_acc")
    t1, t2 = num(numbers, "test1_acc"), num(numbers, "test2_acc")
    if train is None or holdout is None or t1 is None or t2 is None:
        return None
    thresholds = numbers.get("thresholds") if isinstance(numbers.get("thresholds"), dict) else {}
    thr = num(thresholds, "overfit_threshold") or 0.02
    shift_thr = num(thresholds, "shift_threshold") or 0.02
    generalisation, gap = train - holdout, t1 - t2
    if numbers.get("backbone_saw_train") is True:
        # Train and holdout are images the backbone was trained on, the test sets are not: the
        # head's own overfitting can be read, but not set against the test-set gap.
        score = 0.0 if generalisation <= thr else 0.5
        text = (f"train {train:.1%} vs holdout {holdout:.1%} ({generalisation * 100:+.1f} points), both images the "
                f"backbone was trained on (backbone_saw_train), so they are not compared with test set 1 vs test set 2 "
                f"({gap * 100:+.1f} points)")
        text += ": the head barely overfits." if score == 0 else ": the head overfits its training data."
        return score, text[:1].upper() + text[1:]
    if generalisation <= thr:
        score = 0.0
    elif gap > generalisation + shift_thr:
        score = 0.5  # the head overfits, but the test-set gap is much larger than that
    else:
        score = 2.0
    text = (f"train {train:.1%} vs holdout {holdout:.1%} ({generalisation * 100:+.1f} points), "
            f"holdout vs test set 1 {(holdout - t1) * 100:+.1f} points, test set 1 vs test set 2 "
            f"{gap * 100:+.1f} points")
    text += (": the head barely overfits." if score == 0 else
             ": the test-set gap is far larger than the overfitting gap." if score < 1 else
             ": overfitting is as large as the test-set gap.")
    return score, text[:1].upper() + text[1:]


def _misclass_rule(numbers: dict[str, Any]):
    """Misclassified test-2 samples stand out in the features in a way test-1 ones do not. Read
    from the within-class comparison of the two test sets (misclass_compare) when it ran; a
    single test set's within-class result alone cannot speak to the gap (score at most weak)."""
    if "n_features_differ_between_sets" in numbers:
        n_diff, d = num(numbers, "n_features_differ_between_sets"), num(numbers, "n_features")
        share = num(numbers, "share_features_differ_between_sets") or 0.0
        score = 2.0 if share >= 0.05 else 1.0 if (n_diff or 0) > 0 else 0.0
        text = (f"within class, {n_diff:.0f} of {d:.0f} features separate misclassified from correct images "
                "differently on test set 2 than on test set 1" if d else "no features to compare")
        text += "." if score else ": no evidence of a misclassification signature specific to test set 2."
        return score, text[:1].upper() + text[1:]
    share, n_sig, d = num(numbers, "share_significant"), num(numbers, "n_significant"), num(numbers, "n_features")
    if share is None:
        return None
    ratio = num(numbers, "median_var_ratio")
    score = 0.5 if share >= 0.05 else 0.0
    text = (f"misclassified samples differ from correct ones in {n_sig:.0f} of {d:.0f} features ({share:.0%})"
            if n_sig is not None and d else f"{share:.0%} of features differ between misclassified and correct samples")
    if ratio is not None:
        text += f", with {ratio:.2f}× the variance (median over features)"
    text += "; without the comparison with test set 1 this does not show what is specific to test set 2"
    return score, text[:1].upper() + text[1:] + "."


def hypotheses(data: ReportData) -> list[Evidence]:
    """Evidence for each hypothesis for the primary head, strongest first (stable on ties)."""
    head = data.primary_head()
    shift = data.analysis("shift", "") or data.analysis("shift")
    adapt = data.analysis("adapt", head or "") or data.analysis("adapt")
    items = [
        shift_evidence(shift, adapt),
        generic_evidence("imbalance", data.analysis("imbalance", head or "") or data.analysis("imbalance"),
                         _imbalance_rule),
        generic_evidence("overfit", data.analysis("overfit", head or "") or data.analysis("overfit"),
                         _overfit_rule),
        generic_evidence("misclass", _misclass_for(data, head), _misclass_rule),
    ]
    order = list(HYPOTHESES)
    return sorted(items, key=lambda e: (-e.score, order.index(e.hypothesis)))


def _misclass_for(data: ReportData, head: str | None) -> Analysis | None:
    """The test1-vs-test2 comparison of the primary head's misclassification analyses, else its
    analysis on test 2 (else any for that head)."""
    found = (data.analysis("misclass_compare", head) if head else None) or data.analysis("misclass_compare")
    if found is not None:
        return found
    found = data.analysis("misclass", f"{head}/test2") if head else None
    if found is None:
        mine = data.for_head("misclass", head)
        found = mine[-1] if mine else data.analysis("misclass")
    return found


# ------------------------------------------------------------------ the headline
@dataclass
class Headline:
    gap_sentence: str
    ranking: list[Evidence]
    conclusion: str


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


def headline(data: ReportData) -> Headline:
    head = data.primary_head()
    ranking = hypotheses(data)
    metrics = data.metrics.get(head or "", {})
    a, _ = top1(metrics, "test1")
    b, _ = top1(metrics, "test2")
    if a is not None and b is not None:
        g = gap_interval(metrics["test1"], metrics["test2"])
        gap_text = f"{(a - b) * 100:.1f} points"
        if g and not math.isnan(g[1]):
            gap_text += f" (≈95% interval {g[1] * 100:.1f} to {g[2] * 100:.1f})"
        gap_sentence = (f"With the {head} head, top-1 accuracy falls from {a:.2%} on test set 1 to {b:.2%} on "
                        f"test set 2: a gap of {gap_text}.")
    else:
        gap_sentence = "The evaluation did not run, so the size of the gap is unknown."
    supported = [e for e in ranking if e.level in ("strong", "moderate")]
    if supported:
        names = " and ".join(e.title.lower() for e in supported[:2])
        conclusion = f"The evidence points first to {names}."
    elif any(e.level == "weak" for e in ranking):
        conclusion = f"No hypothesis is strongly supported; the best candidate is {ranking[0].title.lower()}."
    elif all(e.level == "not run" for e in ranking):
        conclusion = "No analysis ran, so no hypothesis can be judged."
    else:
        conclusion = "None of the hypotheses tested is clearly supported by these analyses."
    rejected = [e.title.lower() for e in ranking if e.level == "none"]
    if rejected:
        conclusion += " Little or no support for " + ", ".join(rejected) + "."
    return Headline(gap_sentence=gap_sentence, ranking=ranking, conclusion=conclusion)
