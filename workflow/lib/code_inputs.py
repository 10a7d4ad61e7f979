"""Code inputs of a rule, derived from the imports of its step module (stdlib only).

A rule lists `code=code("gap")`: the step module scripts/gap.py and, recursively, every module of
scripts/ it imports (`import scripts.x`, `from scripts import x`, `from scripts.x import y`, at
module level or inside a function). Editing a step therefore reruns that step and its dependents,
and editing a shared helper reruns exactly the steps that import it, directly or through another
helper; a helper no step imports reruns nothing. Used by workflow/rules/common.smk, tested in
tests/test_code_inputs.py.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "scripts"


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Names of the scripts/ modules that the module at `path` imports (existing files only).

    Cached: every Snakemake process (and, on a cluster, every job's own Snakemake) parses the
    rule files, and the ~25 closures share most modules; parsing each file once per process cut
    the Snakefile's load time by seconds."""
    folder = path.parent
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    names.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != PACKAGE:
                continue
            if len(parts) > 1:
                names.add(parts[1])
            else:  # from scripts import stats, evidence
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import x / from .x import y
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return frozenset(name for name in names if (folder / f"{name}.py").is_file())


@cache
def closure(folder: str, step: str) -> tuple[str, ...]:
    """The step and every scripts/ module it imports, recursively: sorted module names."""
    base = Path(folder)
    if not (base / f"{step}.py").is_file():
        raise FileNotFoundError(f"no step module {base / step}.py")
    seen: set[str] = set()
    todo = [step]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(direct_imports(base / f"{name}.py") - seen)
    return tuple(sorted(seen))


def code_inputs(folder: str | Path, *steps: str) -> list[str]:
    """The files of the steps' import closures (one list, sorted, no duplicates)."""
    base = Path(folder)
    modules = sorted({name for step in steps for name in closure(str(base), step)})
    return [str(base / f"{name}.py") for name in modules]


def importers(folder: str | Path, module: str, steps: list[str]) -> list[str]:
    """The steps among `steps` whose closure contains `module` (what an edit of it reruns)."""
    return sorted(step for step in steps if module in closure(str(Path(folder)), step))
