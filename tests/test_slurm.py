"""The whole workflow on a real single-node SLURM cluster through profiles/slurm: same results as local.

tests/slurm/start_cluster.sh installs Debian's munge/slurmctld/slurmd/slurm-client when missing and
starts them as plain daemons (no systemd, no slurmdbd, one fake GPU); a cluster it started earlier is
reused, and one this test started is stopped again at the end (FEATGAP_SLURM_KEEP=1 keeps it).
Skips, saying why, where that cannot work: not root, no apt-get, packages not installable, a real
cluster's /etc/slurm/slurm.conf, or the executor plugin not installed (requirements-slurm.txt).
FEATGAP_SLURM_TEST=0 skips it on purpose.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

try:
    from workflow_helpers import TINY_CONFIG
except ImportError:  # older layout
    from test_workflow import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "tests" / "slurm"
PROFILE = ROOT / "profiles" / "slurm"
# The profile trains on CUDA (train.device: cuda); this cluster's GPU is a fake gres on /dev/null,
# so its jobs train on the CPU as the local run does (a command-line --config replaces the profile's).
ON_CPU = ["--config", "train={device: auto}"]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
# Status-check failures make the SLURM executor wait forever rather than fail: every run has a limit.
SLURM_RUN_TIMEOUT_S = int(os.environ.get("FEATGAP_SLURM_TIMEOUT", "1800"))
LOCAL_RUN_TIMEOUT_S = 1800
# The tiny workflow with one trained head and one baseline (every rule of the default target runs,
# each through its own sbatch job; a second head or baseline would only repeat the same rules, at
# ~10 s of job start-up each), trained with one thread: with two, train_head's float32 results vary
# in the last bit from run to run even on one machine, and the point here is that the cluster
# changes nothing. The improve stage's rules are the training and evaluation code again: off here.
CONFIG = {**TINY_CONFIG, "train": {**TINY_CONFIG.get("train", {}), "threads": 1},
          "heads": {**TINY_CONFIG["heads"], "mlp": None}, "baselines": {**TINY_CONFIG["baselines"], "sgd": None},
          "improve": {**TINY_CONFIG.get("improve", {}), "enabled": False}}
# Keys (JSON) and columns (CSV) whose values legitimately differ between two runs of the same thing:
# times, speeds, file mtimes, the run environment. Everything else must be equal.
VOLATILE_KEYS = {"meta", "mtime", "timing", "seconds"}


def _volatile(key) -> bool:
    return isinstance(key, str) and (key in VOLATILE_KEYS or key.endswith(("_s", "_seconds")))


def _skip_unless_possible():
    if os.environ.get("FEATGAP_SLURM_TEST", "1") == "0":
        pytest.skip("FEATGAP_SLURM_TEST=0")
    if not sys.platform.startswith("linux") or not hasattr(os, "geteuid"):
        pytest.skip("the SLURM test cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (apt-get, /etc/slurm/slurm.conf, daemons)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed: pip install -r requirements-slurm.txt")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node cluster: reused if already up, else started here and stopped afterwards.

    Session-scoped, so it is stopped only when the whole test run ends: the SLURM executor plugin
    runs `scontrol show config` whenever Snakemake starts, which waits 9-10 s for a slurmctld that
    is installed but stopped, and every later workflow test would pay that on each snakemake call."""
    _skip_unless_possible()
    running_before = shutil.which("scontrol") is not None and subprocess.run(
        ["scontrol", "ping"], check=False, capture_output=True, text=True).stdout.count("UP") > 0
    result = subprocess.run([str(SLURM_DIR / "start_cluster.sh")], check=False, capture_output=True, text=True, timeout=900)
    if result.returncode == 3:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, f"start_cluster.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    reused = running_before and "reusing" in result.stderr
    yield
    if not reused and os.environ.get("FEATGAP_SLURM_KEEP") != "1":
        subprocess.run([str(SLURM_DIR / "stop_cluster.sh")], check=False, capture_output=True, timeout=120)


def _env():
    # Rules call `python`: make it this interpreter, as an activated virtual environment would; the
    # SLURM jobs inherit this PATH (sbatch --export=ALL).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return env


class _Run:
    """One snakemake process in `workdir`, output to workdir/<log_name>; started now, awaited by finish()."""

    def __init__(self, workdir: Path, args: list[str], log_name: str):
        self.workdir, self.log = workdir, workdir / log_name
        self.cmd = SNAKEMAKE + ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]
        self.started = time.monotonic()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(),
                                         cwd=workdir)

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            _cancel_jobs_of(self.workdir)
            queue = subprocess.run(["squeue", "--states=all", "-o", "%i %j %T %R %Z"], check=False, capture_output=True,
                                   text=True).stdout
            pytest.fail(f"{' '.join(self.cmd)} did not finish within {timeout} s (a job status that never "
                        f"arrives hangs the SLURM executor):\n{self.log.read_text()[-6000:]}\nsqueue:\n{queue}")
        self.seconds = time.monotonic() - self.started
        output = self.log.read_text()
        if self.proc.returncode != 0:
            raise AssertionError(f"{' '.join(self.cmd)} failed after {self.seconds:.0f} s:\n{output[-8000:]}")
        return output


def _cancel_jobs_of(workdir: Path):
    """Cancel the jobs a timed-out run left behind: those whose working directory is `workdir`."""
    queue = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], check=False, capture_output=True, text=True).stdout
    ids = [line.split("|")[0] for line in queue.splitlines() if line.split("|")[-1] == str(workdir)]
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True)


def _scontrol_jobs(run_id: str) -> list[dict]:
    """The jobs of one Snakemake run as slurmctld still remembers them (MinJobAge), as key=value dicts."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], check=False, capture_output=True, text=True).stdout
    jobs = []
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("JobName") == run_id:
            jobs.append(fields)
    return jobs


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The default target built twice from the same config: locally, and on the cluster."""
    dirs = {}
    for kind in ("local", "slurm"):
        dirs[kind] = tmp_path_factory.mktemp(f"featgap_{kind}")
        (dirs[kind] / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    # Both at once: the cluster run mostly waits (job start-up, status polling), so the local run
    # fills the idle cores. As docs/workflow.md says: the cluster profile alone (not profiles/default),
    # here with a short first status check, as the tiny jobs finish in seconds.
    slurm = _Run(dirs["slurm"], ["--profile", str(PROFILE), "--workflow-profile", "none",
                                 "--slurm-init-seconds-before-status-checks", "2", *ON_CPU], "slurm.log")
    local = _Run(dirs["local"], ["--cores", "2"], "local.log")
    local.finish(LOCAL_RUN_TIMEOUT_S)
    slurm_output = slurm.finish(SLURM_RUN_TIMEOUT_S)
    print(f"local run {local.seconds:.0f} s, SLURM run {slurm.seconds:.0f} s (concurrently)")
    run_id = re.search(r"SLURM run ID: (\S+)", slurm_output).group(1)
    return {**dirs, "run_id": run_id, "slurm_output": slurm_output}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _differences(a, b, where=""):
    """Paths at which two JSON values differ (at most a few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: only on one side" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def _result_files(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if p.is_file()}


def test_slurm_run_matches_local_run(runs):
    local, slurm = runs["local"], runs["slurm"]
    files = _result_files(local)
    assert files == _result_files(slurm), "different result files:\n" + "\n".join(sorted(files ^ _result_files(slurm)))
    assert any(f.startswith("results/qc/") for f in files)

    compared = {"json": 0, "parquet": 0, "csv": 0, "pt": 0}
    problems = []
    for name in sorted(files):
        a, b = local / name, slurm / name
        suffix = a.suffix.lstrip(".")
        if suffix == "json":
            diff = _differences(_strip(json.loads(a.read_text())), _strip(json.loads(b.read_text())))
            problems += [f"{name}{d}" for d in diff[:5]]
        elif suffix == "parquet":
            import pyarrow.parquet as pq

            if not pq.read_table(a).equals(pq.read_table(b)):
                problems.append(f"{name}: tables differ")
        elif suffix in ("csv", "tsv"):
            import pandas as pd

            ta, tb = (pd.read_csv(p, sep="\t" if suffix == "tsv" else ",") for p in (a, b))
            ta, tb = (t.drop(columns=[c for c in t.columns if _volatile(c)]) for t in (ta, tb))
            if not ta.equals(tb):
                problems.append(f"{name}: contents differ")
        elif suffix == "pt":
            import torch

            ma, mb = (torch.load(p, weights_only=True, map_location="cpu") for p in (a, b))
            if not _same_checkpoint(ma, mb):
                problems.append(f"{name}: checkpoints differ")
        else:
            continue  # images, HTML, the report's Markdown (it lists run times): presence only
        compared[suffix] = compared.get(suffix, 0) + 1
    assert not problems, "SLURM results differ from local results:\n" + "\n".join(problems)
    print(f"compared with the local run: {compared}")
    for name in sorted(f for f in files if f.startswith("results/eval/") and f.endswith("metrics.json")):
        top1 = [json.loads((d / name).read_text())["metrics"]["top1"] for d in (local, slurm)]
        print(f"{name}: top-1 local {top1[0]:.4f}, SLURM {top1[1]:.4f}")


def _same_checkpoint(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_checkpoint(a[k], b[k]) for k in a if not _volatile(k))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_checkpoint(x, y) for x, y in zip(a, b))
    return a == b


def test_every_job_ran_on_the_cluster_with_the_profiles_resources(runs):
    jobs = _scontrol_jobs(runs["run_id"])
    assert jobs, f"slurmctld knows no job named {runs['run_id']}"
    assert all(job["JobState"] == "COMPLETED" for job in jobs), [(j["JobId"], j["JobState"]) for j in jobs]
    submitted = len(re.findall(r"has been submitted with SLURM jobid", runs["slurm_output"]))
    assert len(jobs) == submitted
    # Every job's rule is in its comment (rule_<name>_wildcards_...); train_head asks for one GPU.
    rules = {job["JobId"]: re.match(r"rule_(.+?)(_wildcards_|$)", job.get("Comment", "")).group(1) for job in jobs}
    for job in jobs:
        wants_gpu = rules[job["JobId"]] == "train_head"
        assert ("gpu:1" in job.get("TresPerJob", "")) == wants_gpu, (rules[job["JobId"]], job.get("TresPerJob"))


def test_second_slurm_run_has_nothing_to_do(runs):
    dry = _Run(runs["slurm"], ["--profile", str(PROFILE), "--workflow-profile", "none", "-n", *ON_CPU], "dry.log")
    assert "Nothing to be done" in dry.finish(300)


def test_profile_trains_on_cuda_with_a_gpu_sized_time_limit(tmp_path):
    """No cluster needed: a dry run through the profile (jobs not submitted) shows train_head on
    CUDA asking for one GPU and minutes of --time for the EVA-02 grid, not the ~12 h CPU estimate."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="its options are in the profile")
    for split in ("train", "test1", "test2"):
        (tmp_path / f"{split}.csv").write_text("x\n")
    paths = tmp_path / "paths.yaml"
    paths.write_text(yaml.safe_dump({"data": {s: str(tmp_path / f"{s}.csv") for s in ("train", "test1", "test2")}}))

    def train_resources(*extra):
        out = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "-n", "--profile", str(PROFILE),
                              "--workflow-profile", "none", "--executor", "local", "--cores", "1",
                              "--configfile", str(ROOT / "config/eva02.yaml"), str(paths), *extra],
                             check=False, capture_output=True, text=True, timeout=300, env=_env())
        assert out.returncode == 0, out.stderr[-2000:]
        blocks = re.findall(r"rule train_head:.*?resources: ([^\n]+)", out.stdout + out.stderr, re.S)
        assert len(blocks) == 2, out.stdout[-2000:]  # linear and mlp
        return [dict(kv.split("=", 1) for kv in block.split(", ")) for block in blocks]

    for res in train_resources():
        assert res["gpu"] == "1" and int(res["runtime"]) <= 30, res
    for res in train_resources(*ON_CPU):  # the CPU estimate for the same grid: hours
        assert int(res["runtime"]) > 120, res


def _rules_running(module: str) -> set[str]:
    """Rules whose shell command runs `python -m <module>` (read from the rule files)."""
    found = set()
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^\s*rule ", path.read_text(encoding="utf-8"), flags=re.M)[1:]:
            if re.search(rf"python -m {re.escape(module)}\b", block):
                found.add(block.split(":", 1)[0].strip())
    return found


def test_every_rule_that_trains_on_cuda_asks_for_a_gpu():
    """the profile sets train.device: cuda for every job, so every rule that runs
    scripts.train.train_head (train_head and improve_train's retrained variants) must request a GPU, or its
    jobs land on nodes without one and stop with "no CUDA device is available"."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text(encoding="utf-8"))
    assert any("device: cuda" in entry for entry in profile["config"])
    training = _rules_running("scripts.train.train_head")
    assert {"train_head", "improve_train"} <= training
    resources = profile["set-resources"]
    missing = sorted(r for r in training if not (resources.get(r, {}).get("gpu") or resources.get(r, {}).get("gres")))
    assert not missing, f"rules that train on CUDA without a GPU request in profiles/slurm: {missing}"
