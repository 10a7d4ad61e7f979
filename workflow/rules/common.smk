# Shared wiring: config validation, helpers every rule file uses, and the list of final targets.
import hashlib
import json
import os
import shlex
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml", set_default=True)

# Files the workflow ships (resources/imagenet_classes.txt, resources/timm-results/) are found beside the Snakefile when
# the run's working directory is elsewhere (--directory).
for _section, _key in (
    (config.get("evaluate", {}), "class_names"),
    (config.get("analysis", {}).get("reference_line") or {}, "test1_table"),
    (config.get("analysis", {}).get("reference_line") or {}, "test2_table"),
):
    _shipped = _section.get(_key)
    if _shipped and not Path(_shipped).exists() and Path(workflow.basedir, _shipped).is_file():
        _section[_key] = str(Path(workflow.basedir, _shipped))

# `heads: {mlp: null}` in a later config file (or --config) drops a head the defaults define.
for section in ("heads", "baselines"):
    config[section] = {name: spec for name, spec in config.get(section, {}).items() if spec is not None}

SPLITS = ["train", "test1", "test2"]
TESTS = ["test1", "test2"]
# Each rule file appends what `rule all` must build.
ALL_TARGETS = []

# Steps run as `python -m scripts.<step>` from any working directory (and in cluster jobs,
# which parse this file again).
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p))


def part_ids(split):
    """Shard ids of a split: one per configured byte-range part."""
    return [f"{i:05d}" for i in range(config["convert"]["parts"][split])]


def code(*steps):
    """Step modules as inputs, so that editing a step's code reruns it and its dependents."""
    return [f"{workflow.basedir}/scripts/{step}.py" for step in ("featio",) + steps]


def as_json(value):
    """A config value as one shell-quoted JSON argument (params keep it, so a change reruns the rule)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def source_stamp(path, block=1 << 20):
    """Size and SHA-256 of the first and last MB of an input CSV (the fingerprint convert stores).

    A param of plan_convert, so that an edit that keeps the file's mtime (cp -p, rsync -t, some
    editors) still reruns the conversion; 2 MB read per split and run, whatever the file size.
    """
    path = Path(path)
    if not path.is_file():
        return "absent"
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(block))
        if size > block:
            handle.seek(max(block, size - block))
            digest.update(handle.read())
    return f"{size}:{digest.hexdigest()}"


def check_head_names():
    """A head named in report/analysis settings must exist: caught before any job, not in the last one."""
    known = sorted(config["heads"]) + sorted(config["baselines"])
    for key, name in (
        ("report.primary_head", config.get("report", {}).get("primary_head")),
        ("analysis.embedding.head", config.get("analysis", {}).get("embedding", {}).get("head")),
    ):
        if name is not None and name not in known:
            raise WorkflowError(f"config key {key}: no head or baseline named {name!r} (configured: {known})")


def check_inputs_exist():
    """Reject missing input CSVs before any job runs, naming the config key."""
    if config["demo"]["enabled"]:
        return
    for split in SPLITS:
        path = config["data"][split]
        if not Path(path).is_file():
            raise WorkflowError(f"config key data.{split}: file not found: {path}")


check_inputs_exist()
check_head_names()
