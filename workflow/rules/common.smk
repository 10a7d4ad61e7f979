# Shared wiring: config validation, the names and helpers every rule file uses (no rule file
# reads a name another rule file defines), the results layout, and the list of final targets.
# docs/architecture.md describes the stages and how to add an analysis.
import importlib.util
import itertools
import re
import json
import os
import posixpath
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

# `heads: {mlp: null}` in a later config file (or --config) drops a head the defaults define; the
# entries left are validated and filled with the schema's defaults for every key.
for _section in ("heads", "baselines"):
    if isinstance(config.get(_section), dict):
        config[_section] = {name: spec for name, spec in config[_section].items() if spec is not None}


def unknown_config_key(config, schema_path):
    """The first key the schema does not know, as one line naming the key, where it sits and the
    nearest known key; None when there is none. Checked before `validate`, whose message for it
    prints the whole schema (hundreds of lines) below the first line."""
    import difflib
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [e for e in validator.iter_errors(config) if e.validator == "additionalProperties"]
    if not errors:
        return None
    error = min(errors, key=lambda e: list(map(str, e.absolute_path)))
    known = sorted(error.schema.get("properties") or {})
    key = sorted(set(error.instance) - set(known))[0]
    where = ".".join(map(str, error.absolute_path)) or "the top level"
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
    return f"config: unknown key {key!r} in {where}; {hint}"


_unknown = unknown_config_key(config, Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml"))
if _unknown:
    raise WorkflowError(_unknown)
validate(config, schema="../schemas/config.schema.yaml", set_default=True)

# From here on every key with a schema default is set: rule files index config, they never
# repeat a default with `.get(key, default)` (the schema is the one source of defaults).

# Files the workflow ships (resources/imagenet_classes.txt, resources/timm-results/) are found beside the Snakefile when
# the run's working directory is elsewhere (--directory).
for _section, _key in (
    (config["evaluate"], "class_names"),
    (config["analysis"]["reference_line"], "test1_table"),
    (config["analysis"]["reference_line"], "test2_table"),
):
    _shipped = _section.get(_key)
    if _shipped and not Path(_shipped).exists() and Path(workflow.basedir, _shipped).is_file():
        _section[_key] = str(Path(workflow.basedir, _shipped))

SPLITS = ["train", "test1", "test2"]
TESTS = ["test1", "test2"]
# Each split is a CSV of features (convert: plan_convert, convert_part, manifest) or an image folder
# (`{images: FOLDER}`; extract: plan_extract, extract_part, extract_manifest); both routes end in the
# same manifest_path(split), so every later rule is the same. Splits can mix.
IMAGE_SPLITS = [s for s in SPLITS if isinstance(config["data"][s], dict)]
CSV_SPLITS = [s for s in SPLITS if s not in IMAGE_SPLITS]
CSV_SPLIT_PATTERN = "|".join(CSV_SPLITS) or "no-csv-splits"
IMAGE_SPLIT_PATTERN = "|".join(IMAGE_SPLITS) or "no-image-splits"
EXTRACT = config["extract"]
# Where the `path` column of each test split resolves, for the report's pictures: an image split's
# paths are relative to its folder's parent (scripts/lib/images/folders.py), a CSV split's to
# images.root. No root for either test split: no pictures.
IMAGE_ROOTS = {
    t: (str(Path(config["data"][t]["images"]).parent) if t in IMAGE_SPLITS else config["images"]["root"]) for t in TESTS
}
IMAGE_ROOTS = {t: root for t, root in IMAGE_ROOTS.items() if root}
# Each rule file appends what `rule all` must build.
ALL_TARGETS = []

# Models: trained heads and sklearn baselines share results/heads/{name}/ and are scored alike.
TRAIN = config["train"]
TRAIN_HEADS = list(config["heads"])
BASELINES = list(config["baselines"])
HEADS = TRAIN_HEADS + BASELINES
HEAD_PATTERN = "|".join(re.escape(h) for h in HEADS) or "no-heads-configured"
if set(TRAIN_HEADS) & set(BASELINES):
    raise WorkflowError(
        f"config: names used both under heads: and baselines: {sorted(set(TRAIN_HEADS) & set(BASELINES))}"
    )
# The class-names file is an input where it is read (editing it reruns those rules); none in the demo.
CLASS_NAMES = [config["evaluate"]["class_names"]] if config["evaluate"]["class_names"] else []
ANALYSIS = config["analysis"]
# The backbone was trained on the train split (EVA-02 …ft_in22k_in1k on ImageNet-1k train):
# evaluate and the analyses that report holdout numbers state it next to them.
BACKBONE_SAW_TRAIN = "true" if config["backbone_saw_train"] else "false"

# Train rows for resource estimates (train and improve jobs): validate.expected, else the demo's
# size, else 1.3M.
TRAIN_ROWS = config["validate"]["expected"]["train"]["rows"] or (
    config["demo"]["train_rows"] or int(1300 * config["demo"]["train_scale"] * config["demo"]["classes"])
    if config["demo"]["enabled"]
    else 1_300_000
)
# Memory: the in-memory matrix (or the streaming budget) + logits, optimiser state, libraries.
TRAIN_MEM_MB = int(min(TRAIN_ROWS * config["dim"] * 4 / 2**20, TRAIN["memory_budget_mb"]) * 1.1 + 2000)
# Minutes, at least 10. On the CPU: K candidates × epochs × 4·N·D·width flops at a conservative
# 30 GFLOP/s (2 cores), doubled for the refit and the holdout passes. On CUDA (train.device: cuda or
# cuda:N, as profiles/slurm sets when it asks for a GPU): loading at 50 MB/s plus every grid and
# refit step at 10 ms (an H100 replays one 12-candidate EVA-02 step in 1.3 ms; docs/benchmarks.md).
TRAIN_ON_CUDA = str(TRAIN["device"]).startswith("cuda")
HEAD_SECONDS = {
    name: (
        TRAIN_ROWS * config["dim"] * 4 / 50e6 + 2 * head["epochs"] * TRAIN_ROWS / head["batch_size"] * 0.010
        if TRAIN_ON_CUDA
        else 2
        * 4
        * TRAIN_ROWS
        * config["dim"]
        * (sum(head["hidden"]) or config["num_classes"])
        * len(head["lr"])
        * len(head["weight_decay"])
        * head["epochs"]
        / 30e9
    )
    for name, head in config["heads"].items()
}
HEAD_RUNTIME = {name: 10 + int(seconds / 60) for name, seconds in HEAD_SECONDS.items()}

# ImageNet ReaL labels (evaluate.real_labels): evaluate re-scores the one test set whose paths are
# ImageNet val file names, real_labels.smk checks each head on it, and label_noise (analysis.smk)
# bounds its test-2 share with the check's rows when that test set is test set 1. A shipped file is
# found beside the Snakefile (config itself is left as given: the report's params hold it).
REAL_FILE = config["evaluate"]["real_labels"]["file"]
REAL_TEST = config["evaluate"]["real_labels"]["test"]
if REAL_FILE and not Path(REAL_FILE).exists() and Path(workflow.basedir, REAL_FILE).is_file():
    REAL_FILE = str(Path(workflow.basedir, REAL_FILE))

# The improve stage (improve.smk) is on with at least one variant; the report then reads its outputs.
IMPROVE = config["improve"]


def improve_variants(variants, dim, trained_heads):
    """The variants as they apply to this data and these heads, and those left out with why, so
    that changing the feature width or the heads never means editing the improve stage:
    `pca_whiten` below 1 is a share of `dim` (0.75: 192 of 256 dims, 12 of 16); an ensemble with
    no `heads` averages every trained head, and is left out when fewer than two are trained."""
    kept, left_out = {}, {}
    for name, spec in variants.items():
        spec = {**spec, "set": dict(spec["set"]), "heads": list(spec["heads"])}
        width = spec["set"].get("pca_whiten")
        if isinstance(width, float) and 0 < width < 1:
            spec["set"]["pca_whiten"] = max(1, round(width * dim))
        if spec["kind"] == "ensemble" and not spec["heads"]:
            spec["heads"] = list(trained_heads)
            if len(trained_heads) < 2:
                left_out[name] = f"an ensemble of the trained heads needs two, {len(trained_heads)} configured"
                continue
        kept[name] = spec
    return kept, left_out


IMPROVE_VARIANTS, IMPROVE_LEFT_OUT = improve_variants(
    IMPROVE["variants"] if IMPROVE["enabled"] else {}, config["dim"], TRAIN_HEADS
)
for _name, _why in IMPROVE_LEFT_OUT.items():
    print(f"improve.variants: {_name} left out ({_why})", file=sys.stderr)


# ---------------------------------------------------------------- the results layout (one place)
def manifest_path(split):
    """A split's manifest: the only way a step reads its shards (docs/data-contract.md)."""
    return f"results/parquet/{split}.manifest.json"


def qc_path(name):
    """QC report of a split, or of the splits against each other (name `cross`)."""
    return f"results/qc/{name}.json"


def head_file(head, name):
    """model.pt, history.csv or selection.json of a head or baseline."""
    return f"results/heads/{head}/{name}"


def eval_file(head, test, name):
    """predictions.parquet, metrics.json, … of a head on a test set."""
    return f"results/eval/{head}/{test}/{name}"


def analysis_dir(name, *keys):
    """results/analysis/{name}[/{head}[/{test}]]: one folder per analysis and key."""
    return posixpath.join("results/analysis", name, *keys)


def improve_file(name):
    """summary.json, variants.csv, improve.png of the improve stage, or {variant}/model.pt, …"""
    return f"results/improve/{name}"


IMPROVE_FILES = [improve_file(f) for f in ("summary.json", "variants.csv", "improve.png")]

# The check's per-row table: an output of real_labels, and label_noise's input when the ReaL test set
# is test set 1 (one name for both).
REAL_ROWS = "rows.parquet"
LABEL_NOISE_REAL = (
    [analysis_dir("real_labels", "{head}", REAL_ROWS)] if REAL_FILE and HEADS and REAL_TEST == "test1" else []
)


# ---------------------------------------------------------------- what the report reads
# Each stage registers the files the report reads, by name (the names: scripts/lib/report/collect.py);
# report.smk passes exactly these, as `--input NAME=PATH`. What no stage registers (an analysis
# switched off) the report omits.
REPORT_INPUTS = {}


def for_report(kind, pattern, **wildcards):
    """Register `pattern` as the report input `kind:key` for each combination of the wildcard
    values, the key being the values joined by a slash in the order given (head, then test):
    metrics:linear/test1, …; no wildcards: the name is `kind` alone."""
    for values in itertools.product(*wildcards.values()):
        name = f"{kind}:{'/'.join(values)}" if values else kind
        if name in REPORT_INPUTS:
            raise WorkflowError(f"report input {name!r} registered twice (for_report in the rule files)")
        REPORT_INPUTS[name] = str(pattern).format(**dict(zip(wildcards, values)))


# The report's pictures (report.smk `pictures`) read tables other stages own, registered beside
# their rules under a name (`classes`: the most-dropped classes, ranked; `mislabelled`: the test-2
# images most likely mislabelled), with `{head}` left in the pattern.
PICTURE_INPUTS = {}


def for_pictures(name, pattern):
    """Register a table the pictures step reads (one name, one file pattern)."""
    if name in PICTURE_INPUTS:
        raise WorkflowError(f"pictures input {name!r} registered twice (for_pictures in the rule files)")
    PICTURE_INPUTS[name] = str(pattern)


def picture_input(name, head):
    """A registered pictures input for `head` as a list: [] when no stage registered it."""
    return [PICTURE_INPUTS[name].format(head=head)] if name in PICTURE_INPUTS else []


# ---------------------------------------------------------------- analyses
def analysis_on(name):
    """`analysis.<name>.enabled` (schema default true): off leaves the analysis out of `all` and
    hence out of the report's inputs (the report then omits it)."""
    return ANALYSIS[name]["enabled"]


def analysis_options(name):
    """The analysis's validated config section as the step's --options JSON (without `enabled`)."""
    return as_json({k: v for k, v in ANALYSIS[name].items() if k != "enabled"})


def reported(folder, caption, category, subcategory=None, **files):
    """Named outputs {name: folder/file} (`output: **reported(...)`): the only place a step's output
    file names are written; the step gets them as `--output name=path` (output_args). Figures (.png)
    also go into `snakemake --report` under the category, with workflow/report/{caption}.rst, or
    the generic analysis.rst while an analysis has no caption of its own."""
    own = Path(workflow.basedir, "workflow", "report", f"{caption}.rst").is_file()
    caption_file = f"../report/{caption if own else 'analysis'}.rst"

    def one(name):
        path = f"{folder}/{name}"
        if not name.endswith(".png"):
            return path
        return report(path, caption=caption_file, category=category, subcategory=subcategory)

    return {name: one(file) for name, file in files.items()}


def output_args(wildcards, output):
    """A rule's named outputs as the step's `--output name=path` arguments, each shell-quoted
    (a params function: `outputs=output_args`)."""
    return " ".join(f"--output {shlex.quote(f'{name}={path}')}" for name, path in output.items())


def targets(rule, **wildcards):
    """A rule's outputs with its wildcards expanded (e.g. head=HEADS): the final targets it adds."""
    return expand(list(rule.output), **wildcards)


# The benchmark files of the jobs this configuration runs, declared beside each rule that has a
# `benchmark:` (its wildcard values, as for its targets): the report's run metadata (report.smk
# passes them; a missing one is skipped). BENCHMARKED names the rules declared, so report.smk can
# refuse a benchmarked rule that was forgotten.
BENCHMARKS = []
BENCHMARKED = set()


def benchmarked(rule, on=True, **wildcards):
    """Declare a rule's benchmark files: its pattern expanded over the wildcard values of its jobs
    (none when `on` is false: the stage is off in this configuration)."""
    BENCHMARKED.add(rule.rule.name)
    if on:
        BENCHMARKS.extend(expand(str(rule.benchmark), **wildcards))


# Steps run as `python -m scripts.<step>` from any working directory (and in cluster jobs,
# which parse this file again).
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p))


def part_ids(split):
    """Shard ids of a split: one per configured part (byte ranges of a CSV, slices of an image list)."""
    parts = EXTRACT["parts"][split] if split in IMAGE_SPLITS else config["convert"]["parts"][split]
    return [f"{i:05d}" for i in range(parts)]


def folder_stamp(path):
    """The modification times of an image split's class folders: a param of plan_extract, so that
    images added to or removed from any class folder replan the split (one stat per class, not per
    image; an image replaced in place under the same name: `snakemake --forcerun plan_extract`)."""
    path = Path(path)
    if not path.is_dir():
        return "absent"
    return ",".join(f"{e.name}:{e.stat().st_mtime_ns}" for e in sorted(os.scandir(path), key=lambda e: e.name))


_spec = importlib.util.spec_from_file_location("code_inputs", f"{workflow.basedir}/workflow/lib/code_inputs.py")
_code_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_code_inputs)


def code(*steps):
    """The step modules and every scripts/ module they import, recursively, as inputs: editing a
    step reruns it and its dependents, editing a helper exactly the steps that import it
    (workflow/lib/code_inputs.py)."""
    return _code_inputs.code_inputs(f"{workflow.basedir}/scripts", *steps)


def as_json(value):
    """A config value as one shell-quoted JSON argument (params keep it, so a change reruns the rule)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


_spec = importlib.util.spec_from_file_location("fingerprint", f"{workflow.basedir}/scripts/lib/fingerprint.py")
_fingerprint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fingerprint)


def source_stamp(path):
    """Size and sampled SHA-256 of an input CSV: the fingerprint convert stores (scripts/lib/fingerprint.py).

    A param of plan_convert, so that an edit that keeps the file's mtime (cp -p, rsync -t, some
    editors) still reruns the conversion; ~6 MB read per split and run, whatever the file size.
    """
    path = Path(path)
    if not path.is_file():
        return "absent"
    return f"{path.stat().st_size}:{_fingerprint.sampled_sha256(path)}"


def check_head_names():
    """A head named in report/analysis settings must exist: caught before any job, not in the last one."""
    known = sorted(config["heads"]) + sorted(config["baselines"])
    for key, name in (
        ("report.primary_head", config["report"]["primary_head"]),
        ("analysis.embedding.head", ANALYSIS["embedding"]["head"]),
    ):
        if name is not None and name not in known:
            raise WorkflowError(f"config key {key}: no head or baseline named {name!r} (configured: {known})")


def check_inputs_exist():
    """Reject missing input CSVs and image folders before any job runs, naming the config key."""
    if config["demo"]["enabled"]:
        if IMAGE_SPLITS:
            raise WorkflowError(
                f"config key demo.enabled: true generates CSVs for every split, but data.{IMAGE_SPLITS[0]} is "
                "an image folder; set demo.enabled: false"
            )
        return
    for split in SPLITS:
        if split in IMAGE_SPLITS:
            folder = config["data"][split]["images"]
            if not Path(folder).is_dir():
                raise WorkflowError(f"config key data.{split}.images: folder not found: {folder}")
            continue
        path = config["data"][split]
        if not Path(path).is_file():
            raise WorkflowError(f"config key data.{split}: file not found: {path}")
    root = config["images"]["root"]
    if root and not Path(root).is_dir():
        raise WorkflowError(f"config key images.root: folder not found: {root}")


def check_extract_model():
    """With an image split, `dim` must equal extract.model's feature width: checked here, before any
    job, by the step itself (`extract check`: the model built on the meta device, no weights; ~3 s
    for importing torch and timm, paid only by configs with an image split; not again in each cluster
    job, which parses this file too)."""
    if not IMAGE_SPLITS or not workflow.is_main_process:
        return
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.data.extract",
            "check",
            "--dim",
            str(config["dim"]),
            "--options",
            json.dumps(EXTRACT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = [l for l in result.stderr.splitlines() if l.startswith("featgap error:")]
        raise WorkflowError((lines or result.stderr.strip().splitlines()[-1:] or ["extract check failed"])[0])


def check_real_labels():
    """A configured ReaL file must exist: caught before any job, naming the config key."""
    if REAL_FILE and not Path(REAL_FILE).is_file():
        raise WorkflowError(f"config key evaluate.real_labels.file: file not found: {REAL_FILE}")


check_inputs_exist()
check_extract_model()
check_head_names()
check_real_labels()
