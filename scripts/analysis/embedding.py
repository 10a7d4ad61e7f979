"""2-D views (PCA and t-SNE, scikit-learn) of a class-stratified sample of test 1 + test 2.

Reads only the sampled rows of the two test splits and the `correct` column of one head's
predictions for each. Features are standardised with the pooled sample's mean/std, projected
by PCA (the first two components are the PCA view; the first `pca_components` feed t-SNE).
Coloured by test set and by correctness. Numbers behind the verdict: explained variance, and
how mixed the sets are locally — the share of each point's k nearest neighbours (in the
PCA space fed to t-SNE) that come from the same test set, against the share expected if the
sets were exchangeable.
Writes the outputs table, summary, pca_figure, tsne_figure.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scripts.lib.analysis.common import pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split
from scripts.lib.stats import inference

OUTPUTS = {"table": ".csv", "summary": ".json", "pca_figure": ".png", "tsne_figure": ".png"}
SET_COLORS = {"test1": "#4f81bd", "test2": "#c0504d"}


def sample_set(manifest: str | Path, predictions: str | Path, per_set: int, seed: int) -> dict[str, np.ndarray]:
    labels = read_split(manifest, features=False, columns=("label",)).label.astype(np.int64)
    idx = inference.stratified_subsample(labels, per_set, seed)
    split = read_split(manifest, features=True, columns=("row", "label"), rows=idx)
    pred = pq.read_table(predictions, columns=["row", "correct"])
    rows = pred.column("row").to_numpy()
    if len(rows) != len(labels):
        raise FeatgapError(f"{predictions}: {len(rows)} rows, but {manifest} has {len(labels)} (re-run evaluate)")
    if not np.array_equal(rows[idx], split.row):
        raise FeatgapError(f"{predictions}: rows do not match {manifest} (re-run evaluate)")
    correct = pred.column("correct").to_numpy(zero_copy_only=False)[idx].astype(bool)
    return {"x": split.features, "row": split.row, "label": split.label, "correct": correct}


def knn_same_share(points: np.ndarray, groups: np.ndarray, k: int) -> tuple[float, float]:
    """Mean share of each point's k nearest neighbours in its own group, and its expectation under
    exchangeable groups ((n_g − 1) / (n − 1), averaged over points)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(points) - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(points)
    _, ind = nn.kneighbors(points)
    same = (groups[ind[:, 1:]] == groups[:, None]).mean()
    sizes = {g: (groups == g).sum() for g in np.unique(groups)}
    expect = np.mean([(sizes[g] - 1) / (len(groups) - 1) for g in groups])
    return float(same), float(expect)


def plot_views(coords: np.ndarray, frame: pd.DataFrame, title: str, axis: str, path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frame))  # no set is painted on top of the other
    colors = frame["set"].map(SET_COLORS).to_numpy()[order]
    ax.scatter(coords[order, 0], coords[order, 1], s=5, c=colors, alpha=0.6, linewidths=0)
    for name, color in SET_COLORS.items():
        ax.scatter([], [], c=color, s=12, label=name)
    ax.legend(fontsize=7)
    ax.set_title("by test set")
    corr = frame["correct"].to_numpy()[order]
    ax2.scatter(coords[order, 0][corr], coords[order, 1][corr], s=5, c="#9bbb59", alpha=0.5, linewidths=0,
                label="correct")
    ax2.scatter(coords[order, 0][~corr], coords[order, 1][~corr], s=7, c="#000000", alpha=0.7, linewidths=0,
                label="misclassified")
    ax2.legend(fontsize=7)
    ax2.set_title("by correctness")
    for a in (ax, ax2):
        a.set_xlabel(f"{axis} 1")
        a.set_ylabel(f"{axis} 2")
    fig.suptitle(title)
    return save_figure(fig, path)


def embedding(*, test1: str | Path, test2: str | Path, predictions1: str | Path, predictions2: str | Path,
              outputs: Mapping[str, str | Path], options: dict | None = None, seed: int = 0,
              head_name: str, threads: int = 1) -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    started, opts, files = begin("embedding", options, outputs, OUTPUTS)
    head = head_name
    sets = {"test1": sample_set(test1, predictions1, int(opts["per_set"]), seed),
            "test2": sample_set(test2, predictions2, int(opts["per_set"]), seed + 1)}
    x = np.concatenate([s["x"] for s in sets.values()]).astype(np.float64)
    frame = pd.DataFrame({
        "set": np.concatenate([[name] * len(s["row"]) for name, s in sets.items()]),
        "row": np.concatenate([s["row"] for s in sets.values()]),
        "label": np.concatenate([s["label"] for s in sets.values()]),
        "correct": np.concatenate([s["correct"] for s in sets.values()]),
    })
    mean, std = x.mean(0), x.std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    n_comp = int(min(opts["pca_components"], x.shape[1], len(x) - 1))
    pca = PCA(n_components=n_comp, random_state=seed, svd_solver="full").fit(x)
    z = pca.transform(x)
    perplexity = float(min(opts["perplexity"], (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto",
                max_iter=int(opts["tsne_iter"]), n_jobs=threads).fit_transform(z)
    frame["pc1"], frame["pc2"] = z[:, 0], z[:, 1]
    frame["tsne1"], frame["tsne2"] = tsne[:, 0], tsne[:, 1]
    write_table(frame, files["table"])
    ev = pca.explained_variance_ratio_
    figures = [
        plot_views(z[:, :2], frame, f"PCA of test1 + test2 ({ev[0]:.1%} + {ev[1]:.1%} of variance)", "PC",
                   files["pca_figure"]),
        plot_views(tsne, frame, f"t-SNE (perplexity {perplexity:g}) of the first {n_comp} PCs", "t-SNE",
                   files["tsne_figure"]),
    ]
    k = int(opts["neighbors"])
    groups = frame["set"].to_numpy()
    same_pca, expect = knn_same_share(z, groups, k)
    same_tsne, _ = knn_same_share(tsne, groups, k)
    wrong = ~frame["correct"].to_numpy()
    mis_pca, mis_expect = knn_same_share(z, wrong.astype(int), k) if 1 < wrong.sum() < len(wrong) - 1 else (None, None)
    centroid_gap = float(np.linalg.norm(z[groups == "test1"].mean(0) - z[groups == "test2"].mean(0)))
    numbers = {
        "head": head, "n_test1": int((groups == "test1").sum()), "n_test2": int((groups == "test2").sum()),
        "pca_components": n_comp, "explained_variance_pc1": float(ev[0]), "explained_variance_pc2": float(ev[1]),
        "explained_variance_total": float(ev.sum()), "perplexity": perplexity, "neighbors": k,
        "knn_same_set_share_pca": same_pca, "knn_same_set_share_tsne": same_tsne,
        "knn_same_set_share_expected": expect, "set_centroid_distance_pca": centroid_gap,
        "knn_same_correctness_share_pca": mis_pca, "knn_same_correctness_share_expected": mis_expect,
        "misclassified_share": {name: float((~s["correct"]).mean()) for name, s in sets.items()},
    }
    excess = same_pca - expect
    verdict = (
        f"In a stratified sample ({numbers['n_test1']} + {numbers['n_test2']} rows) the two test sets "
        + ("overlap" if excess < 0.05 else "are partly separated" if excess < 0.2 else "are clearly separated")
        + f": {same_pca:.0%} of each point's {k} nearest neighbours (first {n_comp} PCs) come from its own set, "
        f"vs {expect:.0%} if the sets were exchangeable"
        + (f"; misclassified points ({head}) cluster together only {'weakly' if mis_pca - mis_expect < 0.05 else 'noticeably'} "
           f"({mis_pca:.0%} same-correctness neighbours vs {mis_expect:.0%} expected)." if mis_pca is not None else ".")
    )
    return write_summary(files["summary"], verdict=verdict, figures=figures, table=files["table"],
                         numbers=numbers, started=started, seed=seed,
                         inputs=[test1, test2, predictions1, predictions2], extra={"head": head})


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        embedding,
        description="PCA and t-SNE of a stratified sample of both test sets.",
        declared=OUTPUTS,
        inputs={"test1": "test1 manifest", "test2": "test2 manifest", "predictions1": "test-1 predictions.parquet",
                "predictions2": "test-2 predictions.parquet"},
        argv=argv,
    )


if __name__ == "__main__":
    main()
