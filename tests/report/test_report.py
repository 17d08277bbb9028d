"""The run and sweep reports (llmops.report): what they show, that untrusted text stays text, and
that headless Chromium opens them offline.

The browser tests drive Debian's chromium through its chromedriver with selenium: the reports of
the default run, of a failed-gate run (conftest's gate_runs) and of `sweeps=rank_lr` (conftest's
rank_lr_sweep) open with no console error and no network request, every section present, every
chart drawn; a screenshot of each is saved ($LLMOPS_TEST_ARTIFACTS, else the session's tmp folder;
the path is printed). Without chromium they skip, unless LLMOPS_REQUIRE_CHROMIUM=1 (CI).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from typing import Any

import pytest

RUN_SECTIONS = ["summary", "plan", "decide", "compute", "data", "training", "eval", "parity",
                "deploy", "monitor", "release"]
SWEEP_SECTIONS = ["best", "leaderboard", "axes", "curves", "points"]
SCRIPT = "<script>window.__pwned = 1</script>"
ONERROR = '<img src="x" onerror="window.__pwned = 2">'


def _report(*args: str, cwd: Path, module: str = "llmops.report") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _run_dir(default_run: dict[str, Any]) -> Path:
    return sorted(default_run["root"].glob("outputs/runs/*/*"))[0]


def _hostile_copy(run: Path, dest: Path) -> Path:
    """Copies a run folder (its stage links as links) and puts hostile text where a run's own
    text goes: a rejected row, a model's answer, a stage's summary."""
    shutil.copytree(run, dest, symlinks=True)
    data = json.loads((dest / "data_report.json").read_text())
    data["rejects_by_code"] = {"bad_messages": 1}
    data["rejects"] = [{"file": f"rows{ONERROR}.jsonl", "line": 7, "row": 7,
                        "code": "bad_messages", "path": "messages", "message": SCRIPT}]
    (dest / "data_report.json").write_text(json.dumps(data))
    evals = json.loads((dest / "eval_report.json").read_text())
    worst = next(iter(evals["worst_examples"].values()))
    worst[0].update(prediction=SCRIPT, base_prediction=ONERROR)
    (dest / "eval_report.json").write_text(json.dumps(evals))
    plan = json.loads((dest / "plan.json").read_text())
    plan["stages"][0]["summary"] = ONERROR
    (dest / "plan.json").write_text(json.dumps(plan))
    return dest


def test_untrusted_text_is_escaped_and_the_page_allows_only_its_own_scripts(default_run,
                                                                           tmp_path):
    import base64
    import hashlib

    run = _hostile_copy(_run_dir(default_run), tmp_path / "run")
    r = _report(str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    html = (run / "report.html").read_text("utf-8")
    assert SCRIPT not in html and ONERROR not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "&lt;img src=&#34;x&#34; onerror=&#34;window.__pwned = 2&#34;&gt;" in html
    csp = unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">',
                             html)[1])
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 2  # Chart.js and report.js, each allowed by its hash
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    rest = html
    for script in scripts:
        rest = rest.replace(script, "")
    assert re.findall(r"https?://[^\s\"'<]+", rest) == ["http://www.w3.org/2000/svg"]


def test_a_failed_stage_opens_the_report_with_its_error(default_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(_run_dir(default_run), run, symlinks=True)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="failed", failed_stage="sft")
    manifest["stages"]["sft"].update(status="failed", error="sft: RuntimeError: out of <memory>")
    for name in ("eval_base", "eval", "export"):
        manifest["stages"][name] = {**manifest["stages"][name], "status": "skipped"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "eval_report.json").unlink()
    from llmops.report import write_run_report

    html = write_run_report(run).read_text("utf-8")
    problem = html.index('id="problem"')
    assert problem < html.index('id="plan"')
    assert "The run stopped: failed in stage <b>sft</b>" in html
    assert "sft: RuntimeError: out of &lt;memory&gt;" in html[problem:]
    assert "No evaluation report: stage <b>eval</b> is skipped" in html


def test_report_of_a_folder_that_is_no_run_says_so(tmp_path):
    r = _report(str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    assert f"report: no run found in {tmp_path}" in r.stderr


def test_compare_writes_the_sweep_report_with_each_points_status_and_error(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (lr, exact) in enumerate((("1e-3", 0.5), ("1e-2", 0.9))):
        (sweep / str(job)).mkdir(parents=True)
        (sweep / str(job) / "metrics.json").write_text(json.dumps({
            "status": "succeeded", "params": {"train.learning_rate": lr},
            "swept": ["train.learning_rate"], "command": f"python -m llmops lr={lr}",
            "tuned": {"exact_match": exact}, "final_loss": 1.0}))
    (sweep / "2").mkdir()
    (sweep / "2" / "manifest.json").write_text(json.dumps({
        "status": "failed", "overrides": ["train.learning_rate=1"], "stages": {}}))
    (sweep / "2" / "sweep_job.json").write_text(json.dumps({
        "status": "failed", "error": f"sft: loss is NaN {SCRIPT}"}))
    r = _report(str(sweep), cwd=tmp_path, module="llmops.compare")
    assert r.returncode == 0, r.stderr[-3000:]
    html = (sweep / "report.html").read_text("utf-8")
    assert html.index(">python -m llmops lr=1e-2<") < html.index('id="leaderboard"')  # the best
    rows = re.findall(r'<tr><td data-sort="(\d)">\d</td><td>(\d)</td>', html)
    assert rows == [("1", "1"), ("2", "0"), ("3", "2")]  # as comparison.csv ranks them
    assert "sft: loss is NaN &lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert SCRIPT not in html
    assert '<canvas data-chart="axis0"' in html  # exact_match against the learning rate


# ---- in the browser ----


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's /usr/bin/chromium and its chromedriver) through selenium,
    logging the console and the network."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver_path and webdriver):
        reason = ("headless Chromium is not set up: apt-get install chromium chromium-driver "
                  "(and pip install selenium, the dev extra)")
        if os.environ.get("LLMOPS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go: $LLMOPS_TEST_ARTIFACTS/report (CI keeps it), else tmp."""
    folder = os.environ.get("LLMOPS_TEST_ARTIFACTS")
    out = Path(folder) / "report" if folder else tmp_path_factory.mktemp("report_screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(driver: Any, page: Path, shot: Path) -> dict[str, Any]:
    """Opens a report; returns its console entries, the URLs it requested, its section ids, the
    number of canvases Chart.js drew and of scripts that ran; saves a full-page screenshot."""
    from selenium.webdriver.support.ui import WebDriverWait

    assert page.stat().st_size < 5 * 1024 * 1024, page
    driver.get_log("browser"), driver.get_log("performance")  # drop what came before
    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-ready')") == "1")
    found = driver.execute_script("""
        return {sections: Array.from(document.querySelectorAll('section'), s => s.id),
                canvases: document.querySelectorAll('canvas').length,
                drawn: Array.from(document.querySelectorAll('canvas'))
                            .filter(c => Chart.getChart(c) !== undefined).length,
                images: document.querySelectorAll('img').length,
                pwned: window.__pwned === undefined ? null : window.__pwned,
                text: document.body.innerText};""")
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 12000))
    driver.save_screenshot(str(shot))
    driver.set_window_size(1280, 1000)
    print(f"screenshot: {shot}")
    return {**found, "console": driver.get_log("browser"), "requests": requests}


def _clean(seen: dict[str, Any], page: Path) -> None:
    assert seen["console"] == [], seen["console"]
    assert seen["requests"] == [page.as_uri()], seen["requests"]
    assert seen["drawn"] == seen["canvases"] > 0


@pytest.mark.slow
def test_run_and_sweep_reports_open_offline_in_chromium(browser, shots, default_run, gate_runs,
                                                        rank_lr_sweep, tmp_path):
    # The default run: the CLI wrote its report when it ended.
    page = _run_dir(default_run) / "report.html"
    seen = _open(browser, page, shots / "run_default.png")
    _clean(seen, page)
    assert seen["sections"] == RUN_SECTIONS
    assert "The run stopped" not in seen["text"] and "succeeded" in seen["text"]
    for words in ("Compute plan", "Rejects by code", "Gates", "Worst examples", "no_regression"):
        assert words in seen["text"], words

    # A failed gate: exit 3, and the report opens with the gate that failed.
    page = gate_runs["root"] / "fail" / "report.html"
    seen = _open(browser, page, shots / "run_gate_failed.png")
    _clean(seen, page)
    assert seen["sections"] == RUN_SECTIONS
    head = seen["text"][:seen["text"].index("Summary")]
    assert "The run stopped: gate_failed in stage eval" in head and "accuracy" in head
    assert "No export or GGUF report: stage export is skipped" in seen["text"]

    # The rank_lr sweep: compare writes its report; the leaderboard sorts by a click.
    sweep = shutil.copytree(rank_lr_sweep["sweep"], tmp_path / "sweep", symlinks=True)
    r = _report(str(sweep), cwd=tmp_path, module="llmops.compare")
    assert r.returncode == 0, r.stderr[-3000:]
    page = sweep / "report.html"
    seen = _open(browser, page, shots / "sweep_rank_lr.png")
    _clean(seen, page)
    assert seen["sections"] == SWEEP_SECTIONS and seen["canvases"] == 2  # lr axis, loss curves
    from selenium.webdriver.common.by import By

    with open(sweep / "comparison.csv") as f:
        best = next(csv.DictReader(f))
    assert best["command"] in browser.find_element(By.ID, "best").text

    runs = lambda: [row.find_elements(By.TAG_NAME, "td")[1].text for row in  # noqa: E731
                    browser.find_elements(By.CSS_SELECTOR, "#leaderboard-table tbody tr")]
    first = runs()
    assert sorted(first) == ["0", "1"]
    browser.find_elements(By.CSS_SELECTOR, "#leaderboard-table thead th")[0].click()
    browser.find_elements(By.CSS_SELECTOR, "#leaderboard-table thead th")[0].click()
    assert runs() == first[::-1]  # rank, descending


def test_hostile_rows_stay_text_in_chromium(browser, shots, default_run, tmp_path):
    run = _hostile_copy(_run_dir(default_run), tmp_path / "run")
    from llmops.report import write_run_report

    page = write_run_report(run)
    seen = _open(browser, page, shots / "run_hostile.png")
    _clean(seen, page)
    assert seen["pwned"] is None and seen["images"] == 0
    assert SCRIPT in seen["text"] and ONERROR in seen["text"]
