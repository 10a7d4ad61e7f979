"""Code inputs are derived from the imports of each step (workflow/lib/code_inputs.py): editing a
step reruns it and its dependents, editing a helper exactly the steps that import it. And the
architecture rules behind that: steps import libraries, never other steps."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
_spec = importlib.util.spec_from_file_location("code_inputs", ROOT / "workflow" / "lib" / "code_inputs.py")
code_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_inputs)


STAGES = ("data", "train", "evaluate", "analysis", "improve", "report")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SCRIPTS).with_suffix("").parts)


def steps() -> list[str]:
    """Modules with a command line (`if __name__ == "__main__"`): what a rule runs."""
    return sorted(module_name(p) for p in SCRIPTS.rglob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_a_step_is_told_from_a_library_by_where_it_sits():
    """scripts/<stage>/ holds the steps of that stage (each with a command line), scripts/lib/ the
    libraries (none has one); nothing else sits in scripts/ but its __init__.py."""
    assert sorted(p.name for p in SCRIPTS.iterdir() if p.name != "__pycache__") == sorted(
        ["__init__.py", "lib", *STAGES])
    for stage in STAGES:
        for path in (SCRIPTS / stage).glob("*.py"):
            if path.name != "__init__.py":
                assert module_name(path) in steps(), f"{path} sits in a stage folder but has no command line"
    for path in (SCRIPTS / "lib").rglob("*.py"):
        assert module_name(path) not in steps(), f"{path} is a library with a command line"


def test_closure_follows_imports_recursively(tmp_path):
    pkg = tmp_path / "scripts"
    (pkg / "stage").mkdir(parents=True)
    (pkg / "lib" / "sub").mkdir(parents=True)
    for init in ("__init__.py", "stage/__init__.py", "lib/__init__.py", "lib/sub/__init__.py"):
        (pkg / init).write_text("")
    (pkg / "stage" / "step.py").write_text("from scripts.lib import helper\nimport scripts.lib.other as o\n")
    (pkg / "lib" / "helper.py").write_text("def f():\n    from scripts.lib.sub.deep import g\n    return g\n")
    (pkg / "lib" / "sub" / "deep.py").write_text("import numpy\nfrom scripts.featio_missing import x  # not a file\n")
    (pkg / "lib" / "other.py").write_text("")
    (pkg / "stage" / "unused.py").write_text("from scripts.lib.helper import f\n")
    assert code_inputs.closure(str(pkg), "stage.step") == (
        "lib", "lib.helper", "lib.other", "lib.sub", "lib.sub.deep", "stage", "stage.step")
    assert code_inputs.code_inputs(pkg, "stage.step") == [
        str(pkg / f) for f in ("lib/__init__.py", "lib/helper.py", "lib/other.py", "lib/sub/__init__.py",
                               "lib/sub/deep.py", "stage/__init__.py", "stage/step.py")]
    # An edit of deep.py reruns step and unused (through helper); of other.py only step.
    assert code_inputs.importers(pkg, "lib.sub.deep", ["stage.step", "stage.unused"]) == ["stage.step", "stage.unused"]
    assert code_inputs.importers(pkg, "lib.other", ["stage.step", "stage.unused"]) == ["stage.step"]


def test_real_steps_get_their_libraries_and_nothing_else():
    folder = str(SCRIPTS)
    assert {"analysis.gap", "lib.stats.inference", "lib.stats.clustered", "lib.analysis.per_class",
            "lib.analysis.evidence", "lib.analysis.common", "lib.featio.jsonio"} <= set(
        code_inputs.closure(folder, "analysis.gap"))
    # train_baseline shares the training library (grid was missing from its hand-written list once)
    assert {"lib.training.config", "lib.training.data", "lib.heads"} <= set(
        code_inputs.closure(folder, "train.train_baseline"))
    assert "train.train_head" not in code_inputs.closure(folder, "train.train_baseline")
    for step, unrelated in [("data.validate", "lib.stats.inference"), ("analysis.class_counts", "lib.stats.inference"),
                            ("data.convert", "lib.heads"), ("analysis.imbalance", "lib.stats.clustered"),
                            ("analysis.embedding", "analysis.shift")]:
        assert unrelated not in code_inputs.closure(folder, step), (step, unrelated)
    # clustered: exactly the steps that use per-class tests rerun when it changes.
    assert set(code_inputs.importers(folder, "lib.stats.clustered", steps())) == {"analysis.gap", "analysis.misclass"}


def test_no_step_imports_another_step():
    all_steps = set(steps())
    found = {(step, other) for step in all_steps
             for other in code_inputs.direct_imports(SCRIPTS, step) & all_steps}
    # No allowlist: code shared by two steps lives in a library (e.g. scripts/lib/real_scoring.py).
    assert not found, sorted(found)


def test_every_rule_lists_the_code_of_the_step_it_runs():
    """Each rule's `code=code(...)` covers every `python -m scripts.X` its shell command runs."""
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^\s*rule ", smk.read_text())[1:]:
            name = block.split(":", 1)[0]
            run = set(re.findall(r"python -m scripts\.([\w.]+)", block))
            listed = re.search(r"code=code\(([^)]*)\)", block)
            if not run:
                continue
            assert listed, f"{smk.name}: rule {name} runs {sorted(run)} without code inputs"
            covered = {m for step in re.findall(r'"([\w.]+)"', listed.group(1))
                       for m in code_inputs.closure(str(SCRIPTS), step)}
            assert run <= covered, f"{smk.name}: rule {name} runs {sorted(run - covered)} not in its code inputs"


def test_rule_files_read_only_names_from_common():
    """A name shared by rule files lives in common.smk: no rule file reads a name (or a
    `rules.<name>`) another rule file defines, and none redefines a common.smk name."""
    texts = {p.name: p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk"))}
    # Definitions: `NAME = …` and `def name(` at the start of a line (a bare call such as
    # `benchmarked(rules.gap, …)` defines nothing).
    defined = {name: {m.group(1) or m.group(2)
                      for m in re.finditer(r"(?m)^(?:def ([a-z_]\w*)\s*\(|([A-Z_][A-Z0-9_]*)\s*=)", text)}
               | {f"rules.{m}" for m in re.findall(r"(?m)^\s*rule (\w+):", text)}
               for name, text in texts.items()}
    for owner, names in defined.items():
        if owner == "common.smk":
            continue
        assert not names & defined["common.smk"], f"{owner} redefines {sorted(names & defined['common.smk'])}"
        for reader, text in texts.items():
            if reader == owner:
                continue
            used = {n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}\b", text)}
            assert not used, f"{reader} reads {sorted(used)} defined in {owner}: move them to common.smk"
