"""Code inputs of a rule, derived from the imports of its step module (stdlib only).

A rule lists `code=code("analysis.gap")`: the step module scripts/analysis/gap.py and, recursively,
every module of scripts/ it imports (`import scripts.a.b`, `from scripts.a import b`,
`from scripts.a.b import c`, at module level or inside a function), with the `__init__.py` of each
package on the way (Python runs them on import). Editing a step therefore reruns that step and its
dependents, and editing a library reruns exactly the steps that import it, directly or through
another library; a library no step imports reruns nothing. Modules are named by their dotted path
below scripts/ ("lib.featio.reader"). Used by workflow/rules/common.smk, tested in
tests/test_code_inputs.py.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "scripts"


def module_file(base: Path, name: str) -> Path | None:
    """scripts/a/b.py or scripts/a/b/__init__.py for the dotted name "a.b" (None if neither)."""
    path = base.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _with_packages(base: Path, name: str) -> set[str]:
    """The module and every package it sits in (their __init__ runs first)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(base, ".".join(parts[:i]))}


@cache
def direct_imports(base: Path, name: str) -> frozenset[str]:
    """Dotted names of the scripts/ modules (and their packages) that module `name` imports.

    Cached: every Snakemake process (and, on a cluster, every job's own Snakemake) parses the
    rule files, and the rules' closures share most modules; parsing each file once per process
    keeps the Snakefile's load time down."""
    path = module_file(base, name)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()

    def add(module: str, members: list[str]) -> None:
        for member in members:  # `from scripts.a import b`: b may be a module of package a
            if module_file(base, f"{module}.{member}" if module else member):
                found.update(_with_packages(base, f"{module}.{member}" if module else member))
        if module and module_file(base, module):
            found.update(_with_packages(base, module))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    add(".".join(parts[1:]), [])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == PACKAGE:
                add(".".join(parts[1:]), [alias.name for alias in node.names])
    return frozenset(found - {name})


@cache
def closure(folder: str, step: str) -> tuple[str, ...]:
    """The step and every scripts/ module it imports, recursively: sorted dotted names."""
    base = Path(folder)
    if module_file(base, step) is None or module_file(base, step).name == "__init__.py":
        raise FileNotFoundError(f"no step module {base.joinpath(*step.split('.'))}.py")
    seen: set[str] = set()
    todo = sorted(_with_packages(base, step))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(direct_imports(base, name) - seen)
    return tuple(sorted(seen))


def code_inputs(folder: str | Path, *steps: str) -> list[str]:
    """The files of the steps' import closures (one list, sorted, no duplicates)."""
    base = Path(folder)
    modules = sorted({name for step in steps for name in closure(str(base), step)})
    return [str(module_file(base, name)) for name in modules]


def importers(folder: str | Path, module: str, steps: list[str]) -> list[str]:
    """The steps among `steps` whose closure contains `module` (what an edit of it reruns)."""
    return sorted(step for step in steps if module in closure(str(Path(folder)), step))
