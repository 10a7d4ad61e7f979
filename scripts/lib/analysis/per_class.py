"""Library: the per-class drop table that the gap and imbalance analyses both start from.

One row per class, in class order: class, name, train_rows (from class_counts.csv), acc_test1,
acc_test2 (from the two metrics.json files of one head) and drop = acc_test1 − acc_test2, rounded
to inference.DIFF_DECIMALS so that equal drops tie exactly (0.75 − 0.2 vs 0.85 − 0.3) when ranked.
"""

from __future__ import annotations

import pandas as pd

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.stats import inference


def drop_table(counts: pd.DataFrame, m1: pd.DataFrame, m2: pd.DataFrame) -> pd.DataFrame:
    """The shared columns; `counts` is read_class_counts(...), m1/m2 load_per_class(...)."""
    if not (len(counts) == len(m1) == len(m2)):
        raise FeatgapError(f"class counts disagree: class table {len(counts)}, test1 {len(m1)}, test2 {len(m2)}")
    frame = pd.DataFrame({"class": counts["class"], "name": counts["name"], "train_rows": counts["train_rows"],
                          "acc_test1": m1["accuracy"].astype(float), "acc_test2": m2["accuracy"].astype(float)})
    frame["drop"] = (frame["acc_test1"] - frame["acc_test2"]).round(inference.DIFF_DECIMALS)
    return frame
