"""The final report: escaping, self-containment, "not run" sections, the evidence ranking, the CLI,
and one run on real evaluate / gap / shift / imbalance / misclass outputs (format drift guard)."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from analysis_fixtures import planted, planted_eval  # noqa: F401 - fixtures
from step_layout import outputs_in

from scripts.improve.improve_compare import flag as improve_flag
from scripts.lib.analysis import evidence
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import write_json
from scripts.lib.report.answer import hypotheses
from scripts.lib.report.collect import collect, input_name, read_benchmarks
from scripts.report import report

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "scripts" / "report" / "templates" / "report.html"
# A valid 1×1 PNG: the browser test needs images that really decode.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
EVIL = "<script>alert('x')</script>"


def _png(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)
    return str(path)


def _meta(seed=0):
    return {"featgap_version": "0.1.0", "libraries": {"python": "3.11", "numpy": "2"}, "device": "cpu",
            "seed": seed, "wall_time_s": 0.5, "inputs": []}


def _metrics(root: Path, head: str, test: str, top1: float, names: list[str]) -> Path:
    out = root / "results" / "eval" / head / test
    metrics = dict.fromkeys(("top1", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1"), top1)
    metrics.update(top5=min(1.0, top1 + 0.15), nll=1.2, ece=0.05)
    ci = {k: [v - 0.01, v + 0.01] for k, v in metrics.items()}
    plot = _png(out / "confused_pairs.png")
    write_json(out / "metrics.json", {
        "head": head, "test": test, "n": 100, "metrics": metrics, "ci95": ci,
        "top_confused": [{"true": 0, "pred": 1, "count": 3, "true_name": names[0], "pred_name": names[1]}],
        "per_class": {"class": [0, 1], "name": names, "accuracy": [top1, top1]},
        "files": {"confused_pairs.png": plot}, "meta": _meta()})
    return out / "metrics.json"


def _summary(root: Path, rel: str, verdict: str, numbers: dict, figures: int = 1, **extra) -> Path:
    out = root / "results" / "analysis" / rel
    figs = [_png(out / f"fig{i}.png") for i in range(figures)]
    write_json(out / "summary.json", {"verdict": verdict, "figures": figs, "table": str(out / "table.csv"),
                                      "numbers": numbers, "meta": _meta(), **extra})
    return out / "summary.json"


def _decomposition(root: Path, terms: dict, gap: float, residual: tuple) -> Path:
    """A decomposition summary as scripts/analysis/decomposition.py writes it: terms + residual = gap."""
    block = {"method": "Shapley attribution over four mechanisms", "unit": "classes resampled",
             "gap": {"points": gap, "ci95": [gap - 2, gap + 2]}, "expected_gap": None,
             "terms": [{"id": cid, "title": evidence.CAUSES[cid], "points": pts, "ci95": ci, "level": level,
                        "sentence": f"{cid} accounts for {pts} points {EVIL}."} for cid, (pts, ci, level) in terms.items()],
             "residual": {"points": residual[0], "ci95": residual[1]}}
    return _summary(root, "decomposition/linear", "The gap, term by term.", {}, head="linear", decomposition=block)


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """A full set of synthetic artifacts in the real layout (paths relative to tmp_path, as in a run)."""
    monkeypatch.chdir(tmp_path)
    root = Path(".")
    names = [f"tench {EVIL}", "goldfish"]
    files = {}  # the report's named inputs, as the rules register them (common.smk for_report)
    for head, (a, b) in {"linear": (0.80, 0.70), "logreg": (0.78, 0.66)}.items():
        files[f"metrics:{head}/test1"] = _metrics(root, head, "test1", a, names)
        files[f"metrics:{head}/test2"] = _metrics(root, head, "test2", b, names)
    files["shift"] = (_summary(root, "shift", "Features shift.", {
        "domain_auc": 0.71, "domain_auc_ci95": [0.68, 0.74], "n_significant": 30, "n_features": 64,
        "top_features": [{"feature": 3, "cohens_d": 0.4, "q": 1e-9}]}, figures=3))
    files["mean_shift:linear"] = (_summary(root, "mean_shift/linear", "Re-standardising closes 30%.", {
        "gap_closed_share_own_mean_std": 0.3, "gap_train_standardisation": 0.1, "gap_own_mean_std_test2_only": 0.07},
        reading=evidence.reading("recentring", 9.0, [7.0, 11.0], sentence="Re-centring recovers 9 points.",
                                 unit="classes resampled")))
    files["gap:linear"] = (_summary(root, "gap/linear", f"Largest drop: {names[0]}.", {
        "mean_drop": 0.1, "top_classes": [{"rank": 1, "class": 0, "name": names[0], "drop": 0.3}]}, figures=2,
        head="linear", gap={"points": 10.0, "ci95": [8.0, 12.0], "significant": True, "p": 1e-4}))
    files["imbalance:linear"] = (_summary(root, "imbalance/linear", "Imbalance does not explain it.", {
        "alpha": 0.05, "train_rows_min": 732, "train_rows_max": 1300,
        "spearman_drop": {"rho": 0.02, "p": 0.8}}, head="linear"))
    files["overfit:linear"] = (_summary(root, "overfit/linear", "Little overfitting.", {
        "train_acc": 0.83, "holdout_acc": 0.81, "test1_acc": 0.80, "test2_acc": 0.70,
        "thresholds": {"overfit_threshold": 0.02, "shift_threshold": 0.02}}, figures=3, head="linear",
        reading=evidence.not_estimable("overfit", "Not estimable.")))
    files["decomposition:linear"] = _decomposition(root, {"mean_shift": (3.0, [1.0, 5.0], "moderate"),
                                                          "difficulty": (4.5, [2.5, 6.5], "moderate"),
                                                          "class_concentrated": (1.0, [-0.5, 2.5], "none"),
                                                          "label_noise": (0.5, [-0.4, 1.4], "none")},
                                                   gap=10.0, residual=(1.0, [-1.0, 3.0]))
    for test in ("test1", "test2"):
        files[f"misclass:linear/{test}"] = (_summary(root, f"misclass/linear/{test}", f"On {test}, few features differ.", {
            "n_significant": 2, "n_features": 64, "share_significant": 2 / 64, "median_var_ratio": 1.1},
            head="linear", test=test))
    files["embedding"] = (_summary(root, "embedding", "The sets overlap.", {"knn_same_set_share_pca": 0.52}, figures=2))
    evil_dir = root / "results" / "analysis" / f"extra{EVIL.replace('/', '_')}"
    files[evil_dir.name] = _summary(root, evil_dir.relative_to(root / "results" / "analysis").as_posix(), EVIL, {"k": EVIL})
    write_json(root / "results" / "heads" / "linear" / "selection.json",
               {"winner": {"candidate": 0, "lr": 0.001, "weight_decay": 0.0, "holdout_acc": 0.81}, "meta": _meta()})
    files["selection:linear"] = root / "results" / "heads" / "linear" / "selection.json"
    for split in ("train", "test1", "test2"):
        write_json(root / f"results/parquet/{split}.manifest.json", {
            "rows": 10, "dim": 4, "source_fingerprint": {"path": f"data/{split}{EVIL}.csv", "size": 9,
                                                         "sha256_sampled": "ab" * 32}})
        write_json(root / f"results/qc/{split}.json", {"rows": 10, "dim": 4, "classes_present": 2,
                                                       "per_class_counts": [5, 5], "violations": [], "meta": _meta()})
        files[f"manifest:{split}"] = root / f"results/parquet/{split}.manifest.json"
        files[f"qc:{split}"] = root / f"results/qc/{split}.json"
    bench = root / "benchmarks" / "evaluate"
    bench.mkdir(parents=True)
    (bench / "linear.test1.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "2.50\t0:00:02\t512.3\t2048.0\t400\t410\t0\t1\t90\t2.2\n")
    config = {"seed": 0, "heads": {"linear": {}}, "baselines": {"logreg": {}},
              "report": {"title": f"Report {EVIL}", "reference": [
                  {"name": f"Peer {EVIL}", "test1": 86.86, "test2": 76.47, "note": EVIL}]}}
    return {"files": {name: str(f) for name, f in files.items()}, "config": config, "names": names}


def _build(artifacts, tmp_path, files=None, config=None, answer=False):
    ctx = report.build_report(inputs=files if files is not None else artifacts["files"],
                              config=config if config is not None else artifacts["config"], template=TEMPLATE,
                              out_html=tmp_path / "results/report/index.html",
                              out_md=tmp_path / "results/report/report.md", benchmarks=tmp_path / "benchmarks",
                              out_answer=tmp_path / "results/report/answer.json" if answer else None)
    page = (tmp_path / "results/report/index.html").read_text()
    md = (tmp_path / "results/report/report.md").read_text()
    return ctx, page, md


def test_every_string_from_data_or_config_is_escaped(artifacts, tmp_path):
    _, page, md = _build(artifacts, tmp_path)
    # The only <script> element is the page's own self-check at the end.
    assert len(re.findall(r"<script\b", page)) == 1
    assert "alert(" in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(" in page  # class names, paths, config strings render as text
    for shown in ("Report &lt;script&gt;", "Peer &lt;script&gt;", "tench &lt;script&gt;", "data/train&lt;script&gt;"):
        assert shown in page
    prose = md.split("```yaml")[0]  # the config is shown verbatim in a fenced code block (rendered as text)
    assert not re.search(r"(?<!\\)<script", prose) and "\\<script>" in prose and "%3Cscript%3E" in prose


def test_page_is_self_contained(artifacts, tmp_path):
    _, page, _ = _build(artifacts, tmp_path)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page)
    assert "<link" not in page and "@import" not in page
    srcs = re.findall(r"<img src=\"([^\"]+)\"", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert 'id="summary-table"' in page


def test_summary_table_rows_and_references(artifacts, tmp_path):
    ctx, _, md = _build(artifacts, tmp_path)
    rows = {r["model"]: r for r in ctx["summary"]}
    assert list(rows) == ["linear", "logreg"]  # heads first, then baselines
    assert rows["linear"]["test1_top1"] == "80.00" and rows["linear"]["test2_top1"] == "70.00"
    assert rows["linear"]["gap"] == "10.00" and rows["logreg"]["kind"] == "baseline"
    assert rows["linear"]["test1_top1_ci"] == "[79.00, 81.00]"
    ref = ctx["references"][0]
    assert (ref["test1_top1"], ref["test2_top1"], ref["gap"]) == ("86.86", "76.47", "10.39")
    assert "| linear | head | 80.00 |" in md


def test_backbone_caveat_stands_next_to_the_holdout_numbers(artifacts, tmp_path):
    """With backbone_saw_train, evaluate writes a calibration caveat: the report shows it beside the
    holdout choice and the NLL/ECE it qualifies, on the page and in the Markdown; without it, nothing."""
    _, page, md = _build(artifacts, tmp_path)
    assert "backbone_saw_train" not in page and "backbone_saw_train" not in md
    caveat = "the softmax temperature was fitted on a holdout of the training split <b>"
    for test in ("test1", "test2"):
        path = Path(f"results/eval/linear/{test}/metrics.json")
        write_json(path, {**json.loads(path.read_text()), "backbone_saw_train": True, "calibration_caveat": caveat})
    ctx, page, md = _build(artifacts, tmp_path)
    linear = next(m for m in ctx["models"] if m["model"] == "linear")
    assert linear["caveat"] == caveat
    section = page[page.index('id="models"'):]
    assert section.index("Chosen on the holdout") < section.index("Caveat (backbone_saw_train)") < section.index("ECE")
    assert "holdout of the training split &lt;b&gt;" in section  # escaped like every data string
    assert f"Caveat (backbone_saw_train): {caveat}".split(" <b>")[0] in md


def test_the_answer_is_the_decomposition_whose_terms_add_up_to_the_gap(artifacts, tmp_path):
    ctx, page, md = _build(artifacts, tmp_path, answer=True)
    ranking = [(e.cause, e.level) for e in ctx["headline"].ranking]
    assert ranking == [("difficulty", "moderate"), ("mean_shift", "moderate"), ("class_concentrated", "none"),
                       ("label_noise", "none")]
    assert "80.00% on test set 1 to 70.00% on test set 2" in ctx["headline"].gap_sentence
    assert page.index("Why is test set 2 harder?") < page.index('id="waterfall"') < page.index('id="summary-table"')
    assert "accounts for 3.0 points" in md and "&lt;script&gt;" in page
    conclusion = ctx["headline"].conclusion
    assert conclusion.startswith("Of the gap, test-2 images are less typical of their class accounts for 4.5 points")
    assert "No evidence for some classes degraded" in conclusion and "caused by" not in page + md
    answer = json.loads(Path(tmp_path / "results/report/answer.json").read_text())
    assert answer["gap"] == {"points": 10.0, "ci95": [8.0, 12.0], "significant": True}
    assert [c["id"] for c in answer["causes"]] == ["difficulty", "mean_shift", "class_concentrated", "label_noise"]
    assert set(answer["causes"][0]) >= {"id", "title", "share_of_gap", "ci95", "evidence", "sentence"}
    assert answer["method"].startswith("Shapley") and answer["unit"] == "classes resampled"
    # The terms and the method's residual add up to the gap, exactly.
    assert sum(c["share_of_gap"] for c in answer["causes"]) + answer["unexplained"]["points"] == answer["gap"]["points"]
    assert "reference_line" not in answer  # not configured
    # The decomposition's section leads the sections; the other analyses are descriptions.
    assert ctx["sections"][0].id == "decomposition" and ctx["sections"][0].note.startswith(conclusion)
    assert "Method: Shapley attribution" in ctx["sections"][0].note


def test_descriptive_readings_never_enter_the_answer(artifacts, tmp_path):
    """Other analyses' own counterfactual numbers (re-centring recovers 9 points) are descriptions:
    only the decomposition's terms are parts of the gap."""
    imb = Path("results/analysis/imbalance/linear/summary.json")
    block = json.loads(imb.read_text())
    block["reading"] = evidence.reading("imbalance", 6.0, [4.0, 8.0], sentence="Rare classes drop.",
                                        unit="classes resampled")
    write_json(imb, block)
    ranking = hypotheses(collect(artifacts["files"], artifacts["config"]))
    assert {e.cause for e in ranking} == {"mean_shift", "difficulty", "class_concentrated", "label_noise"}
    assert {e.cause: e.points for e in ranking}["mean_shift"] == 3.0


def test_no_significant_gap_names_nothing_above_weak(artifacts, tmp_path):
    path = Path("results/analysis/gap/linear/summary.json")
    summary = json.loads(path.read_text())
    summary["gap"] = {"points": 1.0, "ci95": [-1.0, 3.0], "significant": False, "p": 0.4}
    write_json(path, summary)
    ctx, _, _ = _build(artifacts, tmp_path)
    assert all(e.level in ("weak", "none") for e in ctx["headline"].ranking)
    assert ctx["headline"].conclusion.startswith("No evidence of a gap")
    assert "no evidence of a gap" in ctx["headline"].gap_sentence


def test_switched_off_analyses_are_omitted_and_missing_ones_say_not_run(artifacts, tmp_path):
    """What the rule does not pass (an analysis switched off) has no section; a passed name whose
    file is missing says "not run"."""
    only_eval = {name: path for name, path in artifacts["files"].items() if name.startswith("metrics:")}
    ctx, page, md = _build(artifacts, tmp_path, files=only_eval)
    assert ctx["sections"] == [] and "Not run" not in page and "Not run" not in md
    assert ctx["headline"].ranking == [] and "decomposition did not run" in ctx["headline"].conclusion
    declared = {**only_eval, "shift": "results/analysis/none/summary.json", "embedding": "results/x/summary.json"}
    ctx, page, md = _build(artifacts, tmp_path, files=declared)
    assert [(s.id, s.ran) for s in ctx["sections"]] == [("shift", False), ("embedding", False)]
    assert page.count("Not run: its output is missing") == 2 and md.count("*Not run*") == 2
    assert ctx["missing"] == ["results/analysis/none/summary.json", "results/x/summary.json"]


def test_declared_but_missing_inputs_are_listed_not_fatal(artifacts, tmp_path):
    files = {**artifacts["files"], "overfit:mlp": "results/analysis/overfit/mlp/summary.json"}
    ctx, page, _ = _build(artifacts, tmp_path, files=files)
    assert ctx["missing"] == ["results/analysis/overfit/mlp/summary.json"]
    assert "results/analysis/overfit/mlp/summary.json" in page


def test_run_metadata_from_benchmarks_and_meta_blocks(artifacts, tmp_path):
    ctx, page, _ = _build(artifacts, tmp_path)
    run = ctx["run"]
    assert run["stages"][0]["stage"] == "evaluate" and run["stages"][0]["max_rss_mb"] == "512.3"
    assert ("cpu", len(run["wall_times"])) in run["devices"]
    assert [f["split"] for f in run["fingerprints"]] == ["test1", "test2", "train"]
    assert "The config used" in page


def test_input_names_not_paths_say_what_a_file_is(artifacts, tmp_path):
    assert input_name("metrics:mlp/test2") == ("metrics", "mlp/test2")
    assert input_name("mean_shift:linear") == ("mean_shift", "linear") and input_name("shift") == ("shift", "")
    for bad in ("metrics:mlp", "selection", ":x", "qc"):
        with pytest.raises(FeatgapError, match="expected KIND"):
            input_name(bad)
    # The name decides, wherever the file lies: a gap summary under an odd path is still the gap.
    moved = Path("elsewhere/any.json")
    moved.parent.mkdir()
    moved.write_text(Path(artifacts["files"]["gap:linear"]).read_text())
    data = collect({"gap:linear": moved}, artifacts["config"])
    assert data.analysis("gap", "linear").path == str(moved) and data.declared == {"gap"}


def test_declared_benchmark_files_are_read_and_missing_ones_skipped(tmp_path):
    """The rule passes the files its benchmarked rules declare: benchmarks/<stage>/<job>.tsv."""
    (tmp_path / "evaluate").mkdir()
    declared = tmp_path / "evaluate" / "linear.test1.tsv"
    declared.write_text("s\th:m:s\tmax_rss\tmax_vms\tcpu_time\n2.0\t0:00:02\t100\t200\t1.5\n")
    (tmp_path / "stale.tsv").write_text("s\n9\n")  # not declared: not read
    (bench,) = read_benchmarks([declared, tmp_path / "train" / "linear.tsv"])
    assert (bench.stage, bench.job, bench.seconds, bench.max_rss_mb) == ("evaluate", "linear.test1", 2.0, 100.0)


def test_benchmark_without_rows_is_tolerated(tmp_path):
    (tmp_path / "convert").mkdir()
    (tmp_path / "convert" / "x.tsv").write_text("s\th:m:s\tmax_rss\n")
    (bench,) = read_benchmarks(tmp_path)
    assert bench.stage == "convert" and bench.seconds is None


def test_cli_rejects_unknown_report_keys(artifacts, tmp_path, capsys):
    from scripts.lib.featio.cli import run_cli

    args = ["--config", json.dumps({"report": {"colour": "red"}}), "--template", str(TEMPLATE),
            "--html", str(tmp_path / "i.html"), "--markdown", str(tmp_path / "r.md")]
    with pytest.raises(SystemExit) as exit_:
        run_cli(report.main, args)
    assert exit_.value.code == 1 and "colour" in capsys.readouterr().err
    config = {**artifacts["config"], "report": {"primary_head": "nope"}}
    with pytest.raises(FeatgapError, match=r"report\.primary_head"):
        _build(artifacts, tmp_path, config=config)
    with pytest.raises(FeatgapError, match="not found"):
        report.render_html({}, tmp_path / "nope.html")


def test_cli_writes_both_files(artifacts, tmp_path, capsys):
    report.main(["--config", json.dumps(artifacts["config"]), "--template", str(TEMPLATE), "--benchmarks",
                 "benchmarks", "--html", "out/index.html", "--markdown", "out/report.md",
                 *[arg for name, path in artifacts["files"].items() for arg in ("--input", f"{name}={path}")]])
    assert Path("out/index.html").stat().st_size > 1000 and Path("out/report.md").is_file()
    assert "top-1 accuracy falls" in capsys.readouterr().out


def test_report_on_real_analysis_outputs(planted, planted_eval, tmp_path, monkeypatch):
    """evaluate → gap / imbalance / shift / misclass as the rules run them; the report reads them all."""
    from scripts.analysis import gap, imbalance, mean_shift, misclass, shift
    from scripts.lib.analysis.common import class_counts

    monkeypatch.chdir(tmp_path)
    spec = planted["spec"]
    m1, m2 = planted_eval["test1"] / "metrics.json", planted_eval["test2"] / "metrics.json"
    counts = class_counts({s: planted[s] for s in ("train", "test1", "test2")}, spec.classes, None,
                          "results/analysis/class_counts.csv")
    assert len(counts) == spec.classes
    gap.gap(metrics1=m1, metrics2=m2, class_counts="results/analysis/class_counts.csv",
            outputs=outputs_in("results/analysis/gap/linear", "gap"), head_name="linear")
    imbalance.imbalance(class_counts="results/analysis/class_counts.csv", metrics1=m1, metrics2=m2,
                        outputs=outputs_in("results/analysis/imbalance/linear", "imbalance"), head_name="linear")
    shift.shift_features(test1=planted["test1"], test2=planted["test2"], outputs=outputs_in("results/analysis/shift", "shift"),
                         options={"domain": {"bootstrap": 50, "folds": 3}})
    mean_shift.mean_shift(model=planted["head"], test1=planted["test1"], test2=planted["test2"],
                outputs=outputs_in("results/analysis/mean_shift/linear", "mean_shift"), options={"bootstrap": 50},
                    head_name="linear")
    misclass.misclass(predictions=planted_eval["test2"] / "predictions.parquet", manifest=planted["test2"],
                      outputs=outputs_in("results/analysis/misclass/linear/test2", "misclass"), head_name="linear",
                          test_name="test2")
    eval_dir = Path("results/eval/linear")
    for test in ("test1", "test2"):  # as evaluate writes them under results/eval/{head}/{test}
        (eval_dir / test).mkdir(parents=True)
        (eval_dir / test / "metrics.json").write_text((planted_eval[test] / "metrics.json").read_text())
    files = {"gap:linear": "results/analysis/gap/linear/summary.json", "shift": "results/analysis/shift/summary.json",
             "imbalance:linear": "results/analysis/imbalance/linear/summary.json",
             "mean_shift:linear": "results/analysis/mean_shift/linear/summary.json",
             "misclass:linear/test2": "results/analysis/misclass/linear/test2/summary.json",
             **{f"metrics:linear/{t}": str(eval_dir / t / "metrics.json") for t in ("test1", "test2")}}
    ctx = report.build_report(inputs=files, config={"heads": {"linear": {}}, "seed": 0}, template=TEMPLATE,
                              out_html="results/report/index.html", out_md="results/report/report.md",
                              benchmarks="benchmarks")
    # Descriptive analyses only (no decomposition here): they are shown, nothing is called a part of the gap.
    assert ctx["headline"].ranking == []
    ran = {s.id for s in ctx["sections"] if s.ran}
    assert {"shift", "mean_shift", "gap", "imbalance", "misclass"} <= ran
    gap_section = next(s for s in ctx["sections"] if s.id == "gap")
    assert gap_section.tables and gap_section.tables[0]["title"] == "top_classes"
    page = Path("results/report/index.html").read_text()
    assert page.count("<img ") >= 6 and "figure missing" not in page


def _variant(name, d1, d2, *, improves=False, hurts=False, kind="retrain", p2=None, hurts2=False):
    """A variant as scripts.improve.improve_compare writes it, its flags and their one-line judgement included."""
    flags = {"improves_test2": improves, "hurts_test2": hurts2, "hurts_test1": hurts,
             "gains_test2_by_losing_test1": improves and hurts}
    return {"name": name, **flags, "flag": improve_flag(flags), "kind": kind,
            "changes": {"mixup": 0.2} if kind == "retrain" else {},
            "test1_top1": 80 + d1, "test2_top1": 70 + d2,
            "delta_test1": {"points": d1, "ci95": [d1 - 0.5, d1 + 0.5], "mcnemar_p": 0.5, "mcnemar_p_holm": 0.5},
            "delta_test2": {"points": d2, "ci95": [d2 - 0.8, d2 + 0.8], "mcnemar_p": 0.01,
                            "mcnemar_p_holm": p2 if p2 is not None else 0.01 if improves else 0.6},
            "gap_change": {"points": d1 - d2, "ci95": [d1 - d2 - 1, d1 - d2 + 1]}, "selected_on": "holdout",
            **({"hyperparameters": "the baseline's holdout selection"} if kind == "retrain" else {})}


@pytest.fixture
def improved(artifacts):
    out = Path("results/improve")
    _png(out / "improve.png")
    verdict = f"No variant improves test set 2 {EVIL} beyond noise. Gains on test set 2 only by losing on test set 1: mixup."
    # Written in the stage's own order, which the report must not rely on.
    write_json(out / "summary.json", {
        "baseline": "linear", "baseline_test1_top1": 80.0, "baseline_test2_top1": 70.0, "verdict": verdict,
        "variants": [_variant("noise", 0.0, -0.3), _variant("mixup", -2.0, 1.5, improves=True, hurts=True),
                     _variant(f"ens{EVIL}", 0.2, 0.4, kind="ensemble"), _variant("whiten", -1.0, -3.0, p2=0.002, hurts2=True),
                     # Its numbers alone look like a loss on test set 2; the stage said otherwise: shown as said.
                     _variant("judged", 0.0, -4.0, p2=0.001)],
        "method": {"interval": "within-class bootstrap", "test": "exact McNemar, Holm", "alpha": 0.05},
        "figures": [str(out / "improve.png")], "table": str(out / "variants.csv"), "meta": _meta()})
    files = {**artifacts["files"], "improve": str(out / "summary.json")}
    return {**artifacts, "files": files, "config": {**artifacts["config"], "improve": {"enabled": True}}}


def test_improve_section_ranks_variants_and_flags_traded_gains(improved, tmp_path):
    ctx, page, md = _build(improved, tmp_path, answer=True)
    section = next(s for s in ctx["sections"] if s.id == "improve")
    rows = section.tables[0]["rows"]
    assert [r[1] for r in rows] == ["mixup", f"ens{EVIL}", "noise", "whiten", "judged"]  # test-2 gain order
    assert rows[0][5] == "+1.50 [+0.70, +2.30]" and rows[0][8] == "-2.00 [-2.50, -1.50]" and rows[0][4] == "71.50"
    assert rows[0][-1] == "gains on test set 2 only by losing on test set 1" and rows[2][-1] == "within noise"
    assert rows[3][-1] == "loses on test set 2" and rows[4][-1] == "within noise"  # read, never re-judged
    assert section.figures[0].src.startswith("data:image/png;base64,")
    assert dict(section.numbers)["retrained variants' hyperparameters"] == "the baseline's holdout selection"
    assert section.verdict.startswith("No variant improves test set 2")
    # The verdict follows the causes in the answer and is not one of them.
    assert page.index('class="conclusion"') < page.index('id="improve-answer"') < page.index('id="summary-table"')
    assert "What improves test set 2 (not a cause)" in md and "&lt;script&gt;" in page.split('id="improve"')[1]
    assert "ens<script>" not in page
    answer = json.loads(Path(tmp_path / "results/report/answer.json").read_text())
    assert "improve" not in [c["id"] for c in answer["causes"]]
    assert answer["improve"]["variants"][0]["name"] == "mixup"
    assert answer["improve"]["variants"][0]["gains_test2_by_losing_test1"] is True
    assert answer["improve"]["variants"][3]["flag"] == "loses on test set 2" and answer["improve"]["variants"][3]["hurts_test2"]
    # The stage switched off (the rule passes no improve summary): no section, no sentence.
    off = {name: path for name, path in improved["files"].items() if name != "improve"}
    ctx, page, md = _build(improved, tmp_path, files=off, answer=True)
    assert "improve" not in {s.id for s in ctx["sections"]} and 'id="improve' not in page
    assert "improve" not in json.loads(Path(tmp_path / "results/report/answer.json").read_text())
    # On, but its summary missing: the section says "not run".
    ctx, _, _ = _build(improved, tmp_path, files={**off, "improve": "results/improve/gone.json"})
    assert not next(s for s in ctx["sections"] if s.id == "improve").ran


def test_real_labels_beside_top1_and_in_the_answer(artifacts, tmp_path):
    path = Path("results/eval/linear/test1/metrics.json")
    metrics = json.loads(path.read_text())
    metrics["real"] = {"test": "test1", "top1": 0.85, "ci95": {"top1": [0.84, 0.86]}, "top1_original": 0.81,
                       "n_images": 100, "n_with_real": 90, "errors": {"errors": 20, "in_real": 8, "no_label": 2,
                                                                       "genuine": 10}}
    write_json(path, metrics)
    files = {**artifacts["files"], "real_labels:linear": str(_summary(Path("."), "real_labels/linear", f"ReaL {EVIL}.", {
        "errors_in_real": 8, "examples_in_real": [{"path": f"val/{EVIL}.JPEG", "label_name": "tench"}]},
        head="linear", enrichment={"ratio": 2.5, "ratio_ci95": [1.5, 4.0]}))}
    ctx, page, md = _build(artifacts, tmp_path, files=files, answer=True)
    rows = {r["model"]: r for r in ctx["summary"]}
    assert (rows["linear"]["real_top1"], rows["linear"]["real_top1_ci"]) == ("85.00", "[84.00, 86.00]")
    assert rows["logreg"]["real_top1"] == "–" and "test1 ReaL top-1 %" in page and "test1 ReaL top-1" in md
    sentence = ctx["headline"].real_sentence
    assert "85.00% top-1 (95% interval 84.00 to 86.00" in sentence and "against 81.00%" in sentence
    assert "Of its 20.0 points of errors, 8.0 are label noise" in sentence and "enriched for label noise (×2.50" in sentence
    section = next(s for s in ctx["sections"] if s.id == "real_labels")
    assert section.ran and section.tables[0]["title"] == "examples_in_real" and "val/&lt;script&gt;" in page
    answer = json.loads(Path(tmp_path / "results/report/answer.json").read_text())
    assert answer["real_labels"]["top1"] == 0.85 and answer["real_labels"]["errors"]["genuine"] == 10


def test_improve_section_shows_effective_robustness_when_the_line_is_configured(improved, tmp_path):
    path = Path("results/improve/summary.json")
    summary = json.loads(path.read_text())
    on_line = {"expected_test2_top1": 72.0, "expected_gap": 8.0, "effective_robustness": -2.0, "ci95": [-3.0, -1.0]}
    summary["reference_line"] = {"models": 1040, "slope": 1.008, "intercept": -0.366, "baseline": on_line}
    for v in summary["variants"]:
        er = v["delta_test2"]["points"] - 2.0
        v["reference_line"] = {**on_line, "effective_robustness": er, "ci95": [er - 1.0, er + 1.0]}
    write_json(path, summary)
    ctx, page, _ = _build(improved, tmp_path)
    section = next(s for s in ctx["sections"] if s.id == "improve")
    table = section.tables[0]
    assert table["columns"][-1] == "effective robustness (points) [95% CI]"
    assert table["rows"][0][1] == "mixup" and table["rows"][0][-2:] == ["72.00", "-0.50 [-1.50, +0.50]"]
    numbers = dict(section.numbers)
    assert numbers["baseline effective robustness (points) [95% CI]"] == "-2.00 [-3.00, -1.00]"
    assert "1040 models" in numbers["reference line"] and "effective robustness" in page
    # Not configured (the fixture as written): no such columns.
    write_json(path, {k: v for k, v in summary.items() if k != "reference_line"})
    ctx, _, _ = _build(improved, tmp_path)
    columns = next(s for s in ctx["sections"] if s.id == "improve").tables[0]["columns"]
    assert "effective robustness (points) [95% CI]" not in columns


def _with_line(artifacts, er: float, pi: list[float]) -> dict:
    """A reference_line summary (as scripts.analysis.reference_line writes it) for the primary head at 80 → 70 %."""
    row = {"test1_top1": 80.0, "test2_top1": 70.0, "expected_test2_top1": 70.0 - er, "expected_gap": 10.0 + er,
           "observed_gap": 10.0, "effective_robustness": er, "ci95": [er - 0.5, er + 0.5], "prediction_interval": pi,
           "thresholds": [{"min_test1_top1": 70.0, "models": 1512, "expected_test2_top1": 69.8 - er},
                          {"min_test1_top1": 80.0, "models": 1040, "expected_test2_top1": 70.0 - er},
                          {"min_test1_top1": 85.0, "models": 271, "expected_test2_top1": 70.3 - er}]}
    line = {"models": 1040, "slope": 1.008, "intercept": -0.366, "residual_sd_points": 0.48, "filter": "≥ 80%",
            "calibration": [{"band": "all", "models": 1040, "flagged": 0.057}]}
    path = _summary(Path("."), "reference_line", "On the line.", {}, line=line, heads={"linear": row})
    return {**artifacts["files"], "reference_line": str(path)}


def test_answer_beyond_the_line_attributes_the_gap_to_the_terms(artifacts, tmp_path):
    """Expected gap 7 of the observed 10 points, the rest beyond the line's prediction interval: the
    answer starts with the line, then says what each term accounts for; answer.json says the same."""
    ctx, page, md = _build(artifacts, tmp_path, files=_with_line(artifacts, -3.0, [-4.5, -1.5]), answer=True)
    sentence = ctx["headline"].expected_sentence
    assert sentence.startswith("Every model shows most of such a gap")
    assert "expected at 73.00% on test set 2 (lines over models above 70% to 85% test-1 top-1 put it at 72.80%" in sentence
    assert "to 73.30%), an expected gap of 7.0 points" in sentence
    assert "is 3.0 points (95% prediction interval 1.5 to 4.5): beyond what every model shows" in sentence
    assert ctx["headline"].conclusion.startswith("Of the gap,")
    assert page.index('id="expected"') < page.index('class="gap">With the') and md.index(sentence) < md.index("With the")
    assert "Engstrom et al. 2020" in ctx["headline"].literature_sentence and 'id="literature"' in page
    ref = json.loads((tmp_path / "results/report/answer.json").read_text())["reference_line"]
    assert ref["expected"] == 73.0 and ref["prediction_interval"] == [-4.5, -1.5] and len(ref["thresholds"]) == 3
    assert ref["rest"] == {"points": 3.0, "ci95": [1.5, 4.5], "line": "beyond"}


def test_answer_within_the_line_describes_where_the_common_gap_falls(artifacts, tmp_path):
    ctx, _, _ = _build(artifacts, tmp_path, files=_with_line(artifacts, -0.4, [-1.2, 0.4]), answer=True)
    sentence = ctx["headline"].expected_sentence
    assert "an expected gap of 9.6 points" in sentence and "is 0.4 points (95% prediction interval -0.4 to 1.2)" in sentence
    assert "no evidence that this head loses more than every model does" in sentence
    conclusion = ctx["headline"].conclusion
    assert conclusion.startswith("Where the common gap falls (a description of the gap every model shows, not its cause)")
    assert "accounts for" not in conclusion.split("No evidence")[0]
    ref = json.loads((tmp_path / "results/report/answer.json").read_text())["reference_line"]
    assert ref["rest"]["line"] == "within"
    # Not configured: no sentence, no key, no literature.
    ctx, _, _ = _build(artifacts, tmp_path, answer=True)
    assert ctx["headline"].expected_sentence == "" and ctx["headline"].literature_sentence == ""
    assert "reference_line" not in json.loads((tmp_path / "results/report/answer.json").read_text())


TRICKY = "q < 0.05 & p<0.01, \"quoted\" 'single' café → ✓ &amp; <b>x</b> R&D a|b"
# What CommonMark reads as a character reference or as the start of a tag / autolink: neither may
# appear unescaped in report.md's prose (it would show an entity or render markup).
ENTITY = re.compile(r"(?<!\\)&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9a-fA-F]+);")
TAG_START = re.compile(r"(?<!\\)<[A-Za-z/!?]")


def test_report_md_shows_text_never_entities(artifacts, tmp_path):
    """`Fisher q &lt; 0.05` in report.md; both files from strings with <, &, quotes and Unicode."""
    config = {**artifacts["config"], "report": {**artifacts["config"]["report"], "title": f"Report {TRICKY}"}}
    _, page, md = _build(artifacts, tmp_path, config=config)
    prose = md.split("```yaml")[0]
    # Markdown: the text itself, backslash-escaped only where CommonMark would read markup.
    assert ("# Report q < 0.05 & p<0.01, \"quoted\" 'single' café → ✓ \\&amp; \\<b>x\\</b> R&D a\\|b"
            in prose.splitlines())
    assert not ENTITY.search(prose) and not TAG_START.search(prose)
    assert "\\<script>alert('x')\\</script>" in prose  # data strings too
    # HTML: escaped for HTML, so the browser shows the same text.
    assert ("Report q &lt; 0.05 &amp; p&lt;0.01, &#34;quoted&#34; &#39;single&#39; café → ✓ &amp;amp; "
            "&lt;b&gt;x&lt;/b&gt; R&amp;D a|b") in page
