"""The decomposition against the true counterfactual shares (issue 22), on the project's generator.

Eight scenarios (none; each cause alone; mixes of 2 and 3 causes) x seeds 0-2, heads trained with the
real train_head (100 classes x 64 features), truth = Shapley shares of the head's top-1 over test set
2's twins (tests/decomposition_twins.py). Criteria: every planted cause within max(1 pt, 30 %) of its
true share; 95 % intervals covering the truth in >= 85 % of (cause, run) pairs; no unplanted cause
above weak; label_noise's interval covering 0 in >= 90 % of the runs without flipped labels; terms +
residual == gap. The demo check: the demo config's data, twins and linear head.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts.data.generate_demo import DemoSpec, FeatureModel, demo_counts, draw_split, planted_causes
from scripts.lib.analysis.evidence import level_for
from scripts.lib.decomposition.decompose import CAUSES, decompose
from scripts.lib.decomposition.shapley import shares_of_removals
from scripts.lib.heads import load_head, predict_logits
from scripts.train.train_head import train_head
from tests.decomposition_twins import SCENARIOS, criteria, run, table
from tests.step_layout import outputs_in
from tests.train_helpers import write_split_shards

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: CI shares the machine
    root = tmp_path_factory.mktemp("twins")
    try:
        out = [r for name, seed in itertools.product(SCENARIOS, SEEDS) for r in run(name, seed, root)]
    finally:
        torch.set_num_threads(threads)
    print("\n" + table(out) + "\n" + str(criteria(out)))
    return out


def test_terms_sum_to_the_gap_and_the_gap_is_the_twins_gap(rows):
    figures = criteria(rows)
    assert figures["max_sum_error"] < 1e-9
    assert figures["max_gap_error"] < 1e-9


def test_every_planted_cause_within_max_1pt_30pct(rows):
    bad = [(r["scenario"], r["seed"], r["term"], round(r["est"], 2), round(r["true"], 2))
           for r in rows if r["planted"] and r["term"] != "residual" and not r["within"]]
    assert not bad, f"outside max(1 pt, 30 %): {bad}"


def test_intervals_cover_the_truth_in_85pct(rows):
    assert criteria(rows)["coverage"] >= 0.85


def test_no_unplanted_cause_above_weak(rows):
    bad = [(r["scenario"], r["seed"], r["term"], round(r["est"], 2), r["level"])
           for r in rows if not r["planted"] and r["term"] != "residual" and r["level"] in ("moderate", "strong")]
    assert not bad, f"unplanted causes above weak: {bad}"


def test_label_noise_interval_covers_0_without_flips(rows):
    """Seeds 0-2: 18 of 18 runs without flipped labels. On the hold-out seeds 3-5 it is 16 of 18 (0.89):
    docs/statistics.md, known weaknesses."""
    assert criteria(rows)["label_noise_ci_has_0_without_flips"] >= 0.9


def _demo_head_config() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return config["heads"]["linear"], config["train"]


def test_demo_decomposition_against_its_twins(tmp_path):
    """The demo as `generate_demo` writes it (the same draws, in memory), its twins, and the demo
    config's linear head trained by train_head: every planted cause within max(1 pt, 30 %)."""
    import torch

    torch.set_num_threads(1)
    spec = DemoSpec()
    model, planted, counts = FeatureModel(spec), planted_causes(spec), demo_counts(spec)
    x, y = draw_split(model, "train", counts["train"])
    manifest = write_split_shards(tmp_path / "train", y.astype(np.int16), x, shards=1)
    head_cfg, train_cfg = _demo_head_config()
    train_head(manifest, outputs_in(tmp_path / "head", "train_head"), name="linear", head=head_cfg,
               train={**train_cfg, "device": "cpu", "threads": 1}, num_classes=spec.classes, seed=0)
    head = load_head(tmp_path / "head" / "model.pt")
    logits = lambda f: predict_logits(head, f).astype(np.float64)
    top1 = lambda f, lab: float((logits(f).argmax(1) == lab).mean())
    x1, y1 = draw_split(model, "test1", counts["test1"])
    twins = {frozenset(p): draw_split(model, "test2", counts["test2"], p)
             for k in range(len(planted) + 1) for p in itertools.combinations(planted, k)}
    truth = shares_of_removals({p: top1(*xy) for p, xy in twins.items()}, planted, top1(x1, y1))
    means = np.stack([x[y == c].mean(0) for c in range(spec.classes)])
    est = decompose(x1, y1, *twins[frozenset(planted)], means, logits, bootstrap=100, seed=0)
    report = {c: (round(est.terms[c], 2), round(truth.get(c, 0.0), 2), tuple(round(v, 2) for v in est.ci95[c]))
              for c in CAUSES}
    print(f"\ndemo: gap {est.gap:.2f}, (estimate, truth, 95% interval): {report}")
    assert est.gap == pytest.approx(truth["gap"], abs=1e-9)
    assert sum(est.terms.values()) + est.residual == pytest.approx(est.gap, abs=1e-9)
    bad = {c: report[c] for c in planted if abs(est.terms[c] - truth[c]) > max(1.0, 0.3 * abs(truth[c]))}
    assert not bad, f"demo terms outside max(1 pt, 30 %) of the twins' truth: {bad}"
    loud = {c: report[c] for c in CAUSES if c not in planted
            and level_for(est.terms[c], est.ci95[c], est.gap) in ("moderate", "strong")}
    assert not loud, f"unplanted demo terms above weak: {loud}"
