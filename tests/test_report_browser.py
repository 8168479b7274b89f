"""The HTML report in a real browser: Debian's headless chromium renders the pages from the fixture databases (a grid,
and the fair-comparison study: answer paragraph, forest, cost and calibration figures).

Run with `nox -s browser` (installs chromium with apt-get) or `uv run pytest -m browser tests/test_report_browser.py`.
The screenshot path is printed; a copy is kept at runs/report/browser.png for a person to look at.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import reports
from tests.report_fixtures import build_fixture_db
from tests.study_fixtures import build_fair_study_db

pytestmark = pytest.mark.browser
KEPT_SCREENSHOT = Path(__file__).resolve().parents[1] / "runs" / "report" / "browser.png"


def _chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run `nox -s browser` (it installs Debian's chromium)")
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_page_shows_the_table_and_figures_in_chromium(tmp_path):
    db = build_fixture_db(tmp_path / "results.db")
    reports.render(db, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").as_uri()

    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<table class="results">') == 2
    assert "<th>Δ AUC vs CNN</th>" in dom.stdout and "<td>0.899 ± 0.014</td>" in dom.stdout
    assert dom.stdout.count("<img") == 12

    screenshot = tmp_path / "browser.png"
    shot = _chromium(tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,2000", page)
    assert shot.returncode == 0 and screenshot.stat().st_size > 50_000, shot.stderr[-2000:]
    KEPT_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, KEPT_SCREENSHOT)
    print(f"\nscreenshot: {screenshot} (copy: {KEPT_SCREENSHOT})")


def test_fair_comparison_figures_and_answer_render_in_chromium(tmp_path):
    db = build_fair_study_db(tmp_path / "fair.db")
    reports.render(db, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").as_uri()

    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<p class="answer">Answer: gcnn D4 has the best mean test AUC' in dom.stdout
    for figure in ("forest", "cost", "calibration"):
        assert re.search(rf'<figure id="{figure}"><img alt="[^"]+" src="data:image/png;base64,', dom.stdout), figure
    assert "<th>p Holm (6 vs cnn)</th>" in dom.stdout and "<td>cnn +d4 +TTA</td>" in dom.stdout

    # A page whose images failed to decode screenshots as mostly blank, a small PNG.
    screenshot = tmp_path / "fair.png"
    shot = _chromium(tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,3000", page)
    assert shot.returncode == 0 and screenshot.stat().st_size > 100_000, shot.stderr[-2000:]
    shutil.copyfile(screenshot, KEPT_SCREENSHOT.with_name("browser_fair.png"))
