"""A real browser opens report.html from disk: headless Chromium (Debian's `chromium` package).

The session fixture installs Chromium with apt-get where it is missing and that is possible
(root, apt-get present, the Debian archive reachable); otherwise the test is skipped with the
reason. Chromium runs with no network of its own (background networking, component updates,
sync and QUIC off): the page must render from the file alone.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.report import write_report
from server.report.officer import officer_text
from server.report.privacy_text import explainer, unit_text
from tests.helpers.accounted_runs import SiteCase, write_accounted_run
from tests.helpers.report_support import build_run_dir

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
INSTALL_TIMEOUT_S = 480
BROWSER_TIMEOUT_S = 120
WINDOW = (1280, 2000)


def _apt(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=True)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary, installed from the Debian archive when absent."""
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(reason="Chromium cannot be installed here: /usr/bin/chromium is missing and installing Debian's "
                    "`chromium` package needs root (run `apt-get install -y chromium` as root)")
    if shutil.which("apt-get") is None:
        pytest.skip(reason="Chromium cannot be installed here: /usr/bin/chromium is missing and there is no apt-get "
                    "(not a Debian-based system)")
    try:
        _apt(["update"], timeout=INSTALL_TIMEOUT_S / 3)
        _apt(["install", "-y", "chromium"], timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.skip(reason=f"Chromium cannot be installed here: `{' '.join(err.cmd)}` took over {err.timeout:.0f} s")
    except subprocess.CalledProcessError as err:
        tail = " | ".join((err.stderr or err.stdout or "").strip().splitlines()[-3:])
        pytest.skip(reason=f"Chromium cannot be installed here: `{' '.join(err.cmd)}` failed ({err.returncode}): {tail}")
    if not os.path.exists(CHROMIUM):
        pytest.skip(reason=f"Chromium cannot be installed here: apt-get succeeded but {CHROMIUM} is still missing")
    return CHROMIUM


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no network of its own; the whole process group dies on timeout."""
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"Chromium did not finish within {BROWSER_TIMEOUT_S} s: {' '.join(command)}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_chromium_renders_the_report(chromium: str, tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path / "runs", missing={(2, 1): ("refused", "budget would be exceeded")})
    write_report(run_dir, strict=True)
    url = (run_dir / "report.html").resolve().as_uri()

    shot = tmp_path / "report.png"
    result = run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}",
                          f"--window-size={WINDOW[0]},{WINDOW[1]}", url)
    assert shot.exists(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) one flat colour"
    colours = np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)
    assert len(colours) > 200, f"only {len(colours)} distinct colours: text and figures did not render"
    masthead = pixels[20:110, 40:400].reshape(-1, 3).mean(axis=0)
    assert masthead[2] > masthead[1] + 30, f"the purple masthead (inline CSS) is missing: mean RGB {masthead}"
    assert (pixels[400:].min(axis=2) > 245).mean() < 0.9, "below the masthead the page is blank"

    dom = run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>fedpath report: run 4242</title>" in dom.stdout
    for section in ("summary", "learning-curves", "confusion-matrix", "sites", "how-to-read"):
        assert f'id="{section}"' in dom.stdout, section


def test_chromium_shows_the_sentences_the_replies_support(chromium: str, tmp_path: Path) -> None:
    """Issue 24: what the page says about each site's unit, ε and δ is what its replies say, as rendered."""
    cases = [SiteCase("site-0", "patient", allowance=True), SiteCase("site-1", "patch", earlier_jobs=True,
                                                                         exhausted=True)]
    run_dir = write_accounted_run(tmp_path / "runs", cases, rounds=3, config={"delta": 0.05}, patients=True)
    write_report(run_dir, strict=True)
    report = json.loads((run_dir / "report.json").read_text())
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", (run_dir / "report.html").resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom.stdout))
    text = " ".join(text.split())
    for site in report["sites"]:
        assert site["privacy_statement"] in text, site["site_id"]
        assert f"{site['epsilon_this_job']:.3f}" in text and f"{site['epsilon']:.3f}" in text
    assert explainer(report["sites"]) in text and unit_text(report["sites"]) in text
    assert officer_text(report["sites"]) in text
    assert "delta 0.05 overridden" in text  # the run config's δ, marked as not what the sites applied
    for section in ("patients", "privacy-settings"):
        assert f'id="{section}"' in dom.stdout, section
    level = report["final"]["patient_level"]
    assert f"Per patient: {level['patients']} patients of the test set" in text
