"""One source of defaults: the config schema (scripts/lib/options.py). A step called directly gets the
schema's defaults, an edit of a schema default alone changes what a step uses, and no step keeps
a DEFAULTS copy of its own."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from analysis_fixtures import planted, planted_eval  # noqa: F401 - fixtures
from step_layout import outputs_in
from test_analysis import _fake_training_outputs

from scripts.analysis.overfit import overfit
from scripts.lib import options
from scripts.lib.featio.errors import FeatgapError
from scripts.report.report import report_options

ROOT = Path(__file__).resolve().parents[1]
# Every config section a step reads through merge_options.
STEP_SECTIONS = ["evaluate", "report"] + [f"analysis.{name}" for name in (
    "gap", "shift", "mean_shift", "imbalance", "overfit", "misclass", "difficulty", "label_noise", "real_labels",
    "embedding")]


def _edited_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, key: str, value) -> None:
    """A copy of the schema with one default changed, used by every step from now on."""
    schema = yaml.safe_load(options.SCHEMA.read_text())
    node = schema
    for part in section.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    node["properties"][key]["default"] = value
    path = tmp_path / "config.schema.yaml"
    path.write_text(yaml.safe_dump(schema, allow_unicode=True))
    monkeypatch.setattr(options, "SCHEMA", path)


def test_no_step_keeps_its_own_defaults():
    found = [f"{p.name}:{i}" for p in sorted((ROOT / "scripts").glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.match(r"\s*\w*DEFAULTS\b\s*[:=]", line)]
    assert not found, f"defaults belong in workflow/schemas/config.schema.yaml: {found}"


def test_rule_files_repeat_no_schema_default():
    """A `.get(key, default)` in a rule file would be a second default beside the schema's (the
    schema fills every key it has a default for, head and baseline entries included)."""
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        found = re.findall(r"\.get\(\"(\w+)\", [^)]", smk.read_text())
        assert not found, (smk.name, found)


def test_settings_classes_take_every_default_from_the_schema(tmp_path, monkeypatch):
    """HeadConfig, BaselineConfig and TrainSettings have no defaults of their own: an edit of a
    schema default alone changes them, and an unknown key names its config key."""
    import dataclasses

    from scripts.lib.training.config import HeadConfig, TrainSettings, parse_config
    from scripts.train.train_baseline import BaselineConfig

    for cls in (HeadConfig, BaselineConfig, TrainSettings):
        own = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
               or f.default_factory is not dataclasses.MISSING]
        assert not own, (cls.__name__, own)
    assert parse_config(HeadConfig, {}, "heads.x").epochs == 10
    _edited_schema(tmp_path, monkeypatch, "heads.*", "epochs", 7)
    _edited_schema(tmp_path, monkeypatch, "baselines.*", "max_iter", 5)
    assert parse_config(HeadConfig, {}, "heads.x").epochs == 7
    assert parse_config(HeadConfig, {"epochs": 3}, "heads.x").epochs == 3
    assert parse_config(BaselineConfig, {"type": "logreg"}, "baselines.lr").max_iter == 5
    with pytest.raises(FeatgapError, match=r"heads.x options: unknown keys \['epoch'\]"):
        parse_config(HeadConfig, {"epoch": 3}, "heads.x")


@pytest.mark.parametrize("section", STEP_SECTIONS)
def test_defaults_come_from_the_schema_without_workflow_keys(section):
    defaults = options.merge_options(None, section)
    assert defaults == options.step_defaults(section) and defaults
    assert "enabled" not in defaults  # the workflow's switch never reaches a step
    if "enabled" in options.schema_section(section)["properties"]:  # nor may a step be handed it
        with pytest.raises(FeatgapError, match=r"unknown keys \['enabled'\]"):
            options.merge_options({"enabled": True}, section)


def test_merge_names_unknown_keys_and_fills_nested_sections():
    opts = options.merge_options({"domain": {"folds": 3}}, "analysis.shift")
    assert opts["domain"] == {"max_rows_per_set": 5000, "folds": 3, "C": 1.0, "bootstrap": 500}
    with pytest.raises(FeatgapError, match=r"analysis.gap options: unknown keys \['top'\]"):
        options.merge_options({"top": 3}, "analysis.gap")
    with pytest.raises(FeatgapError, match=r"analysis.shift.domain options: unknown keys \['fold'\]"):
        options.merge_options({"domain": {"fold": 3}}, "analysis.shift")
    with pytest.raises(FeatgapError, match="no config section"):
        options.step_defaults("analysis.nonesuch")


def test_a_schema_default_alone_changes_what_a_step_uses(tmp_path, monkeypatch):
    assert report_options({})["max_numbers"] == 40
    _edited_schema(tmp_path, monkeypatch, "report", "max_numbers", 7)
    assert report_options({})["max_numbers"] == 7
    assert report_options({"report": {"max_numbers": 3}})["max_numbers"] == 3  # config still wins


def test_an_analysis_follows_its_schema_default(planted_eval, tmp_path, monkeypatch):
    _fake_training_outputs(tmp_path)

    def verdict(out: str) -> str:
        return overfit(selection=tmp_path / "selection.json", history=tmp_path / "history.csv",
                       metrics1=planted_eval["test1"] / "metrics.json", metrics2=planted_eval["test2"] / "metrics.json",
                       outputs=outputs_in(tmp_path / out, "overfit"), head_name="linear")["verdict"]

    assert "overfitting is material" in verdict("schema")  # train − holdout 0.06 > default 0.02
    _edited_schema(tmp_path, monkeypatch, "analysis.overfit", "overfit_threshold", 0.1)
    assert "overfitting is small" in verdict("edited")
