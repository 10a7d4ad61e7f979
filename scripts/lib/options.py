"""Step options from the one source of defaults, the config schema (workflow/schemas/config.schema.yaml).

A step gets its config section as `--options` JSON; the workflow passes it validated and filled
with the schema's `default:` values, and a caller of the step function (a test, a notebook) may
pass only some keys or none. Both get the same values because both take the defaults from the
schema: no step keeps a copy that could drift from it. No CLI.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from scripts.lib.featio.errors import FeatgapError

# Found beside the scripts (as the workflow's --directory may be elsewhere), in cluster jobs too.
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# Keys only the workflow reads (whether a rule runs at all): never passed to nor expected by a step.
WORKFLOW_ONLY = frozenset({"enabled"})


def _schema() -> dict[str, Any]:
    return _load(SCHEMA)  # looked up at each call, so a test can point SCHEMA at an edited copy


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def schema_section(path: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema node of a dotted config path, e.g. "analysis.gap" (an object with properties);
    `*` is any entry of a map section: "heads.*" is one head."""
    node = _schema() if schema is None else schema
    for part in path.split("."):
        node = node.get("additionalProperties") if part == "*" else (node.get("properties") or {}).get(part)
        if not isinstance(node, dict):
            raise FeatgapError(f"{SCHEMA}: no config section {path!r}")
    if not _is_section(node):
        raise FeatgapError(f"{SCHEMA}: config key {path!r} is not a section with properties")
    return node


def _is_section(node: dict[str, Any]) -> bool:
    # A section is merged key by key; an object without `properties` (e.g. improve.retrain) is a value.
    return isinstance(node.get("properties"), dict)


def _step_keys(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in node["properties"].items() if k not in WORKFLOW_ONLY}


def _defaults(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sub in _step_keys(node).items():
        if _is_section(sub):
            out[key] = _defaults(sub)
        elif "default" in sub:
            out[key] = copy.deepcopy(sub["default"])  # a caller may change its copy
    return out


def step_defaults(path: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema's defaults of a section, nested sections included, without workflow-only keys."""
    return _defaults(schema_section(path, schema))


def _merge(options: dict[str, Any], node: dict[str, Any], what: str) -> dict[str, Any]:
    known = _step_keys(node)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise FeatgapError(f"{what} options: unknown keys {unknown} (known: {sorted(known)})")
    opts = _defaults(node)
    for key, value in options.items():
        if _is_section(known[key]):
            if not isinstance(value, dict):
                raise FeatgapError(f"{what}.{key} options: expected a mapping, got {type(value).__name__}")
            opts[key] = _merge(value, known[key], f"{what}.{key}")
        else:
            opts[key] = value
    return opts


def merge_options(options: dict[str, Any] | None, path: str, schema: dict[str, Any] | None = None,
                  where: str | None = None) -> dict[str, Any]:
    """`options` over the schema defaults of section `path`; an unknown key (`enabled` too, which
    the rule strips) is an error naming it (as config key `where`, default `path`) and the known ones."""
    return _merge(dict(options or {}), schema_section(path, schema), where or path)
