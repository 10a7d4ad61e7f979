"""The report's document model: one context (the answer, the summary table, the sections, the
models, data and run metadata) built from the collected inputs (scripts.lib.report.collect) and the
evidence ranking (scripts.lib.report.answer). Every value is plain text or a number, not yet escaped:
scripts.lib.report.render renders this one context with both templates (HTML and Markdown), each
escaping for its own format.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from scripts.lib.featio.provenance import FEATGAP_VERSION
from scripts.lib.report.answer import gap_interval, headline
from scripts.lib.report.collect import ReportData
from scripts.lib.report.format import ci_text, embed, fmt_value, pct, share_text
from scripts.lib.report.sections import build_sections

METRIC_LABELS = {"top1": "top-1", "top5": "top-5", "balanced_accuracy": "balanced accuracy",
                 "macro_precision": "macro precision", "macro_recall": "macro recall", "macro_f1": "macro F1",
                 "nll": "NLL", "ece": "ECE"}


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
        "answer_figure": embed(head_line.figure, md_dir) if head_line.figure else None,
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
        "pictures": data.pictures,
    }
