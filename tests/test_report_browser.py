"""Open the report in headless Chromium: every image decodes and the summary table is there.

Needs Debian's `chromium` (installed by .ci/run). Skipped, with the reason, where no Chromium is
installed or it cannot start (e.g. a sandbox that forbids it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest
from test_report import TEMPLATE, artifacts  # noqa: F401 - fixture

from scripts.report import report

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = next(path for path in map(shutil.which, CANDIDATES) if path)
    with tempfile.TemporaryDirectory(prefix="featgap-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, check=False,
                              text=True, timeout=timeout, env={**os.environ, "HOME": profile})


@pytest.fixture(scope="module")
def browser() -> None:
    if not any(map(shutil.which, CANDIDATES)):
        pytest.skip("headless browser test: no chromium on PATH (.ci/run installs Debian's chromium)")
    try:
        probe = chromium("--dump-dom", "data:text/html,<p id=probe>ok</p>", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"headless browser test: chromium cannot start here ({err})")
    if 'id="probe"' not in probe.stdout:
        pytest.skip(f"headless browser test: chromium cannot render here: {probe.stderr.strip()[-300:]}")


def test_report_opens_in_chromium_with_every_image_loaded(browser, artifacts, tmp_path):
    out = tmp_path / "results/report/index.html"
    report.build_report(inputs=artifacts["files"], config=artifacts["config"], template=TEMPLATE, out_html=out,
                        out_md=tmp_path / "results/report/report.md", benchmarks=tmp_path / "benchmarks")
    expected = out.read_text().count("<img ")
    assert expected >= 10
    # Offline: the page must not need the network (the self-contained contract).
    result = chromium("--virtual-time-budget=5000", "--dump-dom", out.resolve().as_uri())
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, f"no DOM from chromium: {result.stderr[-500:]}"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("checked") == "yes", f"the page's load handler did not run: {attrs}"
    assert attrs["images-total"] == str(expected)
    assert attrs["images-broken"] == "0"
    assert attrs["summary-table"] == "yes"
    assert 'id="summary-table"' in result.stdout and "<script>alert" not in result.stdout
