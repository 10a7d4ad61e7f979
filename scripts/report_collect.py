"""Gather what the report shows: sort the report rule's input files by kind and read them.

The report rule passes every artifact the config enables (its input list); this module recognises
them by their place in the results layout (docs/architecture.md) and reads them:

    results/parquet/{split}.manifest.json         manifests (source fingerprints)
    results/qc/{split}.json                       validation
    results/heads/{head}/selection.json           hyperparameter selection (heads)
    results/eval/{head}/{test}/metrics.json       metrics (heads and baselines)
    results/analysis/{kind}/.../summary.json      analyses: kind = gap, shift, imbalance, overfit,
                                                  misclass, embedding; an `adapt` folder anywhere
                                                  below analysis/ marks the adaptation check
    results/improve/summary.json                  what improves test set 2 (improve stage; its
                                                  figure improve.png beside it)
    benchmarks/{stage}/{job}.tsv                  Snakemake benchmark files: the ones the benchmarked
                                                  rules declare (passed by the rule; missing skipped)

Anything missing is simply absent here; the report then says "not run".
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from scripts.featio import FeatgapError, read_json

_PATTERNS = {
    "manifest": re.compile(r"(?:^|/)parquet/(?P<split>[^/]+)\.manifest\.json$"),
    "qc": re.compile(r"(?:^|/)qc/(?P<split>[^/]+)\.json$"),
    "selection": re.compile(r"(?:^|/)heads/(?P<head>[^/]+)/selection\.json$"),
    "metrics": re.compile(r"(?:^|/)eval/(?P<head>[^/]+)/(?P<test>[^/]+)/metrics\.json$"),
    "analysis": re.compile(r"(?:^|/)analysis/(?P<rest>.+)/summary\.json$"),
    "improve": re.compile(r"(?:^|/)improve/summary\.json$"),
}


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
    missing: list[str] = field(default_factory=list)  # declared inputs that do not exist
    sources: dict[str, str] = field(default_factory=dict)  # "kind:key" -> path read
    improve: dict[str, Any] | None = None  # results/improve/summary.json
    improve_path: str | None = None

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


def classify(path: str | os.PathLike) -> tuple[str, dict[str, str]] | None:
    """(kind, fields) of a report input by its place in the layout; None for anything else."""
    text = PurePosixPath(Path(path).as_posix()).as_posix()
    for kind, pattern in _PATTERNS.items():
        match = pattern.search(text)
        if match:
            return kind, match.groupdict()
    return None


def analysis_kind(rest: str) -> tuple[str, str]:
    """analysis/<rest>/summary.json -> (kind, key): 'gap/linear' -> ('gap', 'linear'),
    'misclass/linear/test2' -> ('misclass', 'linear/test2'), 'shift' -> ('shift', ''),
    'shift/adapt/linear' or 'adapt/linear' -> ('adapt', 'linear')."""
    parts = rest.split("/")
    if "adapt" in parts:
        i = parts.index("adapt")
        return "adapt", "/".join(parts[i + 1:])
    return parts[0], "/".join(parts[1:])


def _read(path: str) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise FeatgapError(f"{path}: cannot read JSON ({err})") from None
    if not isinstance(data, dict):
        raise FeatgapError(f"{path}: expected a JSON object")
    return data


def collect(inputs: Iterable[str | os.PathLike], config: dict[str, Any],
            benchmarks: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> ReportData:
    """Read every recognised input; missing files are listed, not fatal (the report says "not run")."""
    data = ReportData(config=config)
    for raw in inputs:
        path = str(raw)
        kind_fields = classify(path)
        if kind_fields is None:
            continue
        if not Path(path).is_file():
            data.missing.append(path)
            continue
        kind, fields = kind_fields
        if kind == "manifest":
            data.manifests[fields["split"]] = _read(path)
        elif kind == "qc":
            data.qc[fields["split"]] = _read(path)
        elif kind == "selection":
            data.selections[fields["head"]] = _read(path)
        elif kind == "metrics":
            content = _read(path)
            if "metrics" not in content:
                raise FeatgapError(f"{path}: no 'metrics' block (was it written by scripts.evaluate?)")
            data.metrics.setdefault(fields["head"], {})[fields["test"]] = content
        elif kind == "improve":
            content = _read(path)
            for need in ("variants", "verdict"):
                if need not in content:
                    raise FeatgapError(f"{path}: no '{need}' key (was it written by scripts.improve?)")
            data.improve, data.improve_path = content, path
        elif kind == "analysis":
            content = _read(path)
            akind, key = analysis_kind(fields["rest"])
            for need in ("verdict", "figures"):
                if need not in content:
                    raise FeatgapError(f"{path}: summary has no '{need}' key (analysis contract: verdict, "
                                       "figures, table, numbers, meta)")
            data.analyses.setdefault(akind, {})[key] = Analysis(
                kind=akind, key=key, path=path, verdict=str(content.get("verdict") or ""),
                figures=[str(f) for f in content.get("figures") or []], table=content.get("table"),
                numbers=content.get("numbers") or {}, raw=content)
        data.sources[f"{kind}:{'/'.join(fields.values())}"] = path
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
