"""The documentation site in a real browser: build it, serve it on 127.0.0.1 and open pages in headless chromium.

Run with `nox -s browser` (it installs chromium and the docs group) or `uv run pytest -m browser
tests/test_docs_browser.py` with mkdocs installed. A page passes when chromium loads it, the page logs nothing to
the console (the site's own scripts log nothing when all is well: any message is an error, an uncaught exception
or a warning), every request it makes is answered without an error status, and its text is there. Screenshots
are kept under the test's tmp folder and copied to runs/docs/ for a person to look at.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "runs" / "docs"
# (page, text that must be in its DOM): the landing page, the generated spec reference, one tutorial.
PAGES = [("", "Where to go next"), ("reference/spec/", "train.lr"), ("tutorials/first-grid/", "my_grid.toml")]


def _chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run `nox -s browser` (it installs Debian's chromium)")
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               # Console messages go to stderr as INFO:CONSOLE lines; the time budget lets the scripts run first.
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
               f"--user-data-dir={profile}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class Server:
    """A static file server on a free port that records every request it answers with an error status."""

    def __init__(self, folder: Path):
        self.failed: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                if str(code).isdigit() and int(code) >= 400:
                    server.failed.append(f"{code} {self.path}")

            def log_message(self, *args):  # keep pytest's output to what fails
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Server]:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: `nox -s browser` installs the docs group")
    pytest.importorskip("material", reason="mkdocs-material is not installed: `nox -s browser` installs the docs group")
    folder = tmp_path_factory.mktemp("docs") / "site"
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                            "-d", str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-3000:]
    with Server(folder) as server:
        yield server


@pytest.mark.parametrize("page, text", PAGES)
def test_a_page_loads_with_no_console_message_and_no_failed_request(site, page, text, tmp_path):
    site.failed.clear()
    dom = _chromium(tmp_path / "profile-dom", "--dump-dom", site.url + page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == []
    assert site.failed == []
    assert text in re.sub(r"<[^>]+>", "", dom.stdout)
    assert 'class="md-nav' in dom.stdout  # the theme rendered, not a bare page

    name = (page.strip("/").replace("/", "-") or "index") + ".png"
    screenshot = tmp_path / name
    shot = _chromium(tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,1000",
                     site.url + page)
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    KEPT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, KEPT / name)
    print(f"\nscreenshot: {screenshot} (copy: {KEPT / name})")


def test_the_check_sees_a_console_error_and_a_missing_file(tmp_path):
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text(
        '<html><body><script>console.error("boom")</script><img src="missing.png"></body></html>')
    with Server(tmp_path / "page") as server:
        dom = _chromium(tmp_path / "profile", "--dump-dom", server.url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert any('"boom"' in line for line in console_messages(dom.stderr))
    assert "404 /missing.png" in server.failed  # (chromium also asks this bare page for /favicon.ico)
