"""Gather what the report shows: read the report rule's named inputs and the benchmark files.

The workflow owns the layout: each stage registers the files the report reads under a name
`KIND[:KEY]` (workflow/rules/common.smk: `for_report`), and the rule passes them as
`--input NAME=PATH`. Nothing here looks at a path to find out what it is:

    manifest:{split}          a split's manifest (source fingerprints)
    qc:{split}                validation of a split (`qc:cross`: the splits against each other)
    selection:{head}          hyperparameter selection of a trained head
    metrics:{head}/{test}     evaluate's metrics (heads and baselines)
    improve                   the improve stage's summary (its figure and table listed in it)
    pictures                  the pictures of the most-dropped classes (scripts/report/pictures.py)
    {analysis}[:{key}]        an analysis's summary.json: gap:linear, shift, mean_shift:linear,
                              misclass:linear/test2, ... (key: head, head/test or none)
    benchmarks/{stage}/{job}.tsv   Snakemake benchmark files the benchmarked rules declare (missing skipped)

What the rule does not pass (an analysis switched off) the report omits; a name passed whose file
is missing (a run outside the workflow) is listed and its section says "not run".
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json


@dataclass
class Analysis:
    """One analysis summary.json: kind (gap, shift, ...), key (head, head/test or "") and content."""

    kind: str
    key: str
    path: str
    verdict: str
    figures: list[str]
    table: str | None
    numbers: dict[str, Any]
    raw: dict[str, Any]

    @property
    def head(self) -> str | None:
        return self.raw.get("head") or (self.key.split("/")[0] if self.key else None)


@dataclass
class Benchmark:
    """One Snakemake benchmark TSV (the mean over its repeats)."""

    stage: str
    job: str
    path: str
    seconds: float | None
    max_rss_mb: float | None
    max_vms_mb: float | None
    cpu_time: float | None


@dataclass
class ReportData:
    config: dict[str, Any]
    manifests: dict[str, dict] = field(default_factory=dict)
    qc: dict[str, dict] = field(default_factory=dict)
    selections: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)  # head -> test -> metrics.json
    analyses: dict[str, dict[str, Analysis]] = field(default_factory=dict)  # kind -> key -> Analysis
    benchmarks: list[Benchmark] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # named inputs whose file does not exist
    declared: set[str] = field(default_factory=set)  # input kinds the rule passed (what this config runs)
    sources: dict[str, str] = field(default_factory=dict)  # input name ("kind:key") -> path read
    improve: dict[str, Any] | None = None  # results/improve/summary.json
    pictures: dict[str, Any] | None = None  # results/report/pictures.json (thumbnails as data URIs)

    # ------------------------------------------------------------ model lists
    def baselines(self) -> list[str]:
        return _names(self.config.get("baselines"))

    def heads(self) -> list[str]:
        return _names(self.config.get("heads"))

    def models(self) -> list[str]:
        """Models with metrics: configured heads first, then baselines, then anything else."""
        order = [m for m in self.heads() + self.baselines() if m in self.metrics]
        return order + sorted(m for m in self.metrics if m not in order)

    def primary_head(self) -> str | None:
        wanted = (self.config.get("report") or {}).get("primary_head")
        models = self.models()
        if wanted:
            return wanted if wanted in models or wanted in self.heads() else None
        heads = [h for h in self.heads() if h in self.metrics]
        if heads:
            return heads[0]
        return models[0] if models else (self.heads() or [None])[0]

    def analysis(self, kind: str, key: str | None = None) -> Analysis | None:
        """The analysis of `kind` for `key` (a head, head/test or ""); None when it did not run."""
        found = self.analyses.get(kind, {})
        if key is None:
            return next(iter(found.values()), None)
        return found.get(key)

    def for_head(self, kind: str, head: str | None) -> list[Analysis]:
        """All analyses of `kind` belonging to `head` (e.g. misclass for each test set)."""
        return [a for a in self.analyses.get(kind, {}).values() if a.head == head]


def _names(section: Any) -> list[str]:
    if isinstance(section, dict):
        return [str(k) for k in section]
    if isinstance(section, (list, tuple)):
        return [str(v if not isinstance(v, dict) else v.get("name", "")) for v in section]
    return []


def input_name(name: str) -> tuple[str, str]:
    """'metrics:linear/test2' -> ('metrics', 'linear/test2'); 'shift' -> ('shift', '')."""
    kind, _, key = name.partition(":")
    if not kind or (kind == "metrics" and key.count("/") != 1) or (kind in ("manifest", "qc", "selection") and not key):
        raise FeatgapError(f"--input {name}=...: expected KIND[:KEY] (metrics:HEAD/TEST, manifest:SPLIT, "
                           "qc:SPLIT, selection:HEAD, improve, or ANALYSIS[:HEAD[/TEST]])")
    return kind, key


def _read(path: str) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise FeatgapError(f"{path}: cannot read JSON ({err})") from None
    if not isinstance(data, dict):
        raise FeatgapError(f"{path}: expected a JSON object")
    return data


def collect(inputs: Mapping[str, str | os.PathLike], config: dict[str, Any],
            benchmarks: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> ReportData:
    """Read every named input; missing files are listed, not fatal (their section says "not run")."""
    data = ReportData(config=config)
    for name, raw in inputs.items():
        path = str(raw)
        kind, key = input_name(name)
        data.declared.add(kind)
        if not Path(path).is_file():
            data.missing.append(path)
            continue
        content = _read(path)
        if kind in ("manifest", "qc", "selection"):
            {"manifest": data.manifests, "qc": data.qc, "selection": data.selections}[kind][key] = content
        elif kind == "metrics":
            if "metrics" not in content:
                raise FeatgapError(f"{path}: no 'metrics' block (was it written by scripts.evaluate.evaluate?)")
            head, test = key.split("/")
            data.metrics.setdefault(head, {})[test] = content
        elif kind == "improve":
            for need in ("variants", "verdict", "figures"):
                if need not in content:
                    raise FeatgapError(f"{path}: no '{need}' key (was it written by scripts.improve.improve_compare?)")
            data.improve = content
        elif kind == "pictures":
            if "panels" not in content:
                raise FeatgapError(f"{path}: no 'panels' key (was it written by scripts.report.pictures?)")
            data.pictures = content
        else:
            for need in ("verdict", "figures"):
                if need not in content:
                    raise FeatgapError(f"{path}: summary has no '{need}' key (analysis contract: verdict, "
                                       "figures, table, numbers, meta)")
            data.analyses.setdefault(kind, {})[key] = Analysis(
                kind=kind, key=key, path=path, verdict=str(content.get("verdict") or ""),
                figures=[str(f) for f in content.get("figures") or []], table=content.get("table"),
                numbers=content.get("numbers") or {}, raw=content)
        data.sources[name] = path
    if benchmarks is not None:
        data.benchmarks = read_benchmarks(benchmarks)
    return data


def _float(value: str | None) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _benchmark_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[tuple[Path, str, str]]:
    """(file, stage, job) of each benchmark file: a file is benchmarks/<stage>/<job>.tsv (skipped
    when missing: its job has not run); a folder (outside the workflow) gives every *.tsv below it."""
    found: dict[Path, tuple[str, str]] = {}
    for path in map(Path, [paths] if isinstance(paths, (str, os.PathLike)) else paths):
        if path.is_dir():
            for tsv in path.rglob("*.tsv"):
                rel = tsv.relative_to(path)
                stage = rel.parts[0] if len(rel.parts) > 1 else "(top)"
                found[tsv] = stage, str(PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 else rel).removesuffix(".tsv")
        elif path.is_file():
            found[path] = path.parent.name, path.name.removesuffix(".tsv")
    return [(tsv, *found[tsv]) for tsv in sorted(found)]


def read_benchmarks(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Benchmark]:
    """The benchmark files (or every *.tsv below a folder), each the mean of its repeats."""
    found = []
    for tsv, stage, job in _benchmark_files(paths):
        try:
            with tsv.open(newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
        except (OSError, csv.Error):
            rows = []

        def mean(col: str, rows: list = rows) -> float | None:
            values = [v for v in (_float(r.get(col)) for r in rows) if v is not None]
            return sum(values) / len(values) if values else None

        found.append(Benchmark(stage=stage, job=job, path=str(tsv), seconds=mean("s"),
                               max_rss_mb=mean("max_rss"), max_vms_mb=mean("max_vms"),
                               cpu_time=mean("cpu_time")))
    return found
