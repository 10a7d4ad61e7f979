"""misclass_compare: the misclassification signature, test set 2 vs test set 1 (one head).

Reads both test sets' features.csv and asks what the gap question needs: does the
within-class signature of a misclassified image differ between test set 1 and test set 2?
(z test of the two within-class effects per feature, BH q). Writes the table, summary and figure.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from scripts.lib.analysis.common import fmt_p, mpl_text, pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.stats import inference

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


def compare_tables(t1: pd.DataFrame, t2: pd.DataFrame) -> pd.DataFrame:
    """Per feature: the within-class effect of being misclassified on each test set and the z test
    of their difference (independent test sets: the variances add)."""
    if len(t1) != len(t2) or not np.array_equal(t1["feature"], t2["feature"]):
        raise FeatgapError(f"the two features.csv tables disagree: {len(t1)} vs {len(t2)} features")
    b1, b2 = t1["within_diff"].to_numpy(float), t2["within_diff"].to_numpy(float)
    se = np.sqrt(t1["within_se"].to_numpy(float) ** 2 + t2["within_se"].to_numpy(float) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (b2 - b1) / se
    p = np.where(np.isfinite(z), 2 * sps.norm.sf(np.abs(z)), np.nan)
    return pd.DataFrame({"feature": t1["feature"], "within_diff_test1": b1, "within_diff_test2": b2,
                         "q_test1": t1["q"], "q_test2": t2["q"], "difference": b2 - b1, "se": se, "z": z, "p": p,
                         "q": inference.bh_q(p)})


def misclass_compare(*, features1: str | Path, features2: str | Path, outputs: Mapping[str, str | Path],
                     options: dict | None = None, head_name: str, seed: int = 0) -> dict[str, Any]:
    started, opts, files = begin("misclass_compare", options, outputs, OUTPUTS)
    alpha = float(opts["alpha"])
    head = head_name
    t1, t2 = pd.read_csv(features1), pd.read_csv(features2)
    need = {"feature", "within_diff", "within_se", "q"}
    for path, table in ((features1, t1), (features2, t2)):
        if not need <= set(table.columns):
            raise FeatgapError(f"{path}: expected columns {sorted(need)} (re-run misclass), found {list(table.columns)}")
    table = compare_tables(t1, t2)
    write_table(table, files["table"])
    valid = table.dropna(subset=["within_diff_test1", "within_diff_test2"])
    rho = inference.spearman(valid["within_diff_test1"], valid["within_diff_test2"])
    d = len(table)
    n1, n2 = int((table["q_test1"] < alpha).sum()), int((table["q_test2"] < alpha).sum())
    n_differ = int((table["q"] < alpha).sum())
    share = n_differ / d if d else 0.0
    evidence = "moderate" if share >= 0.05 else "weak" if n_differ > 0 else "none"
    numbers = {"alpha": alpha, "n_features": d, "n_significant_test1": n1, "n_significant_test2": n2,
               "n_features_differ_between_sets": n_differ, "share_features_differ_between_sets": share,
               "spearman_effects_test1_test2": rho, "evidence": evidence,
               "units": {"z": "images within class on each test set; the two test sets independent"},
               "verdict_rests_on": ["n_features_differ_between_sets", "share_features_differ_between_sets"],
               "top_features": table.reindex(table["z"].abs().sort_values(ascending=False).index).head(10)[
                   ["feature", "within_diff_test1", "within_diff_test2", "z", "q"]].to_dict(orient="records")}
    figure = _plot_compare(table, alpha, f"{head}: within-class effect of being misclassified, test1 vs test2",
                           files["figure"])
    similar = rho["rho"] is not None and np.isfinite(rho["rho"])
    verdict = (
        f"Within class, misclassified images differ from correct ones in {n1} features on test set 1 and {n2} on "
        f"test set 2 (BH q < {alpha})"
        + (f"; agreement of the effects between the sets: Spearman ρ = {rho['rho']:+.2f} ({fmt_p(rho['p'])})"
           if similar else "")
        + f"; {n_differ} of {d} features have a different effect on test set 2 (BH q < {alpha}), so "
        + ("the misclassified images of test set 2 stand out in their own way, which may account for part of the gap."
           if n_differ else "no evidence that misclassification on test set 2 has a signature of its own that "
           "would account for the gap.")
    )
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[features1, features2],
                         extra={"head": head})


def _plot_compare(table: pd.DataFrame, alpha: float, title: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sig = (table["q"] < alpha).to_numpy()
    ax.scatter(table["within_diff_test1"][~sig], table["within_diff_test2"][~sig], s=6, color="#7f7f7f",
               label=f"same effect (q ≥ {alpha:g})")
    ax.scatter(table["within_diff_test1"][sig], table["within_diff_test2"][sig], s=12, color="#c0504d",
               label=f"different effect ({int(sig.sum())})")
    lim = np.nanmax(np.abs(table[["within_diff_test1", "within_diff_test2"]].to_numpy())) if len(table) else 1.0
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls="--")
    ax.set_xlabel("misclassified − correct on test1 (within class)")
    ax.set_ylabel("misclassified − correct on test2 (within class)")
    ax.legend(fontsize=7)
    ax.set_title(mpl_text(title), fontsize=9)
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        misclass_compare,
        description="Within-class misclassification effects, test1 vs test2.",
        declared=OUTPUTS,
        inputs={
            "features1": "misclass features table of test set 1",
            "features2": "misclass features table of test set 2",
        },
        argv=argv,
    )


if __name__ == "__main__":
    main()
