# featgap: explain the accuracy gap between two test sets from a frozen model's features.
# Glue only: the steps live in scripts/, the wiring in workflow/rules/.
from snakemake.utils import min_version

min_version("9.0")


# The defaults live beside this file, so `--directory elsewhere --configfile mine.yaml` only overrides.
configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    head=HEAD_PATTERN,
    split="train|test1|test2",
    test="test1|test2",
    part=r"\d{5}",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/real_labels.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/improve.smk"
include: "workflow/rules/report.smk"


# Seconds of bookkeeping: on a cluster they run beside Snakemake instead of waiting in the queue.
# (Not `manifest`: it reads every shard once for its CRC-32, 14 GB for the real train split.)
localrules:
    all,
    plan_convert,
    class_counts,


rule all:
    default_target: True
    input:
        ALL_TARGETS,
