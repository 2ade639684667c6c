"""The site launcher's defects where they were seen (issue 24): the real `python -m deploy site` commands.

* `--check` ("connects nowhere") wrote a budget change into the ledger: now the file stays byte-identical, and
  a hand-edited ledger stops it with exit status 2 and the fix;
* after a SIGKILL of the site daemon a Flower child process survived and wrote into the next daemon's log: the
  next start ends it, by PID, and a daemon of the site still running stops the start.

No SuperLink: the daemon (a real `flower-supernode`, plaintext to a loopback port where nothing listens) keeps
retrying, which is all these checks need. Every process started here is killed at the end by its FLWR_HOME.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from common.privacy.ledger import LEDGER_FILE, PrivacyLedger
from deploy.flower import flower_env
from deploy.site.leftovers import PID_FILE, TOKEN_ENV
from simulations.local_superlink import free_port
from simulations.processes import kill_processes_with_env, processes_with_env
from tests.helpers.site_inputs import new_site

pytestmark = pytest.mark.slow  # Python subprocesses and a Flower daemon

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Path]]:
    data = tmp_path / "export"
    for c, name in enumerate(("benign", "tumour")):
        (data / name).mkdir(parents=True)
        for i in range(3):  # every image distinct: a copy under two classes would be dropped (issue 25)
            Image.new("RGB", (8, 8), (60 * i, 100 + 50 * c, 150)).save(data / name / f"{i}.png")
    home = tmp_path / "state" / "flwr-home"
    yield {"data": data, "state": tmp_path / "state", "home": home, "logs": tmp_path}
    kill_processes_with_env("FLWR_HOME", str(home.resolve()), signal.SIGKILL, wait=5.0)


def _launcher(site: dict[str, Path], *extra: str, **node: object) -> list[str]:
    values = {"data-path": str(site["data"]), "site-id": "site-a", "epsilon-budget": 8.0, "delta": 1e-5,
              "state-dir": str(site["state"]), **new_site(), **node}
    config = " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in values.items())
    return [sys.executable, "-m", "deploy", "site", "--superlink", f"127.0.0.1:{free_port()}", "--insecure-local-testing",
            "--no-link-check", "--runtime-port", str(free_port()), "--node-config", config, *extra]


def _run(argv: list[str], site: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, env=flower_env(site["home"]), capture_output=True, text=True, timeout=120,
                          check=False)


def _wait(condition: Callable[[], object], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_check_leaves_the_ledger_byte_identical_and_refuses_a_hand_edit(site: dict[str, Path]) -> None:
    ledger = PrivacyLedger.open(site["state"], "site-a", 1e-5, 8.0)
    ledger.commit_round([(1.0, 0.2, 50)], {"round": 1})
    before = (site["state"] / LEDGER_FILE).read_bytes()
    done = _run(_launcher(site, "--check", **{"epsilon-budget": 12.0, "accept-budget-change": "8->12"}), site)
    assert done.returncode == 0, done.stderr
    assert (site["state"] / LEDGER_FILE).read_bytes() == before
    assert "a start would record in the ledger: the budget change below (--check writes nothing)" in done.stderr
    assert "unit of privacy: one patch (privacy-unit=patch" in done.stderr.splitlines()[0]  # the banner
    edited = json.loads(before)
    edited["epsilon_budget"] = 100.0
    (site["state"] / LEDGER_FILE).write_text(json.dumps(edited))
    done = _run(_launcher(site, "--check", **{"epsilon-budget": 100.0}), site)
    assert done.returncode == 2 and "epsilon_budget is 100.0 in the file but was 8.0" in done.stderr


def test_a_flower_process_left_by_a_killed_daemon_is_ended_before_the_site_starts_again(
        site: dict[str, Path]) -> None:
    with open(site["logs"] / "first.log", "wb") as out:
        first = subprocess.Popen(_launcher(site), cwd=REPO, env=flower_env(site["home"]), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    _wait(lambda: (site["state"] / PID_FILE).exists(), "the launcher to record its daemon")
    token = json.loads((site["state"] / PID_FILE).read_text())["token"]
    children = lambda: [p for p in processes_with_env(TOKEN_ENV, token) if p != first.pid]  # noqa: E731
    _wait(children, "flower-supernode to start its SuperExec")
    [child] = children()
    os.kill(child, signal.SIGSTOP)  # a child that does not notice its daemon's death (a ClientApp stuck in a job)
    first.send_signal(signal.SIGKILL)  # the daemon (the launcher exec'd it: same PID) crashes
    first.wait(timeout=10)
    assert processes_with_env(TOKEN_ENV, token) == [child]  # the leftover

    checked = _run(_launcher(site, "--check"), site)
    assert checked.returncode == 0 and "a start would end 1 Flower process(es)" in checked.stderr
    assert str(child) in checked.stderr and "flower-superexec" in checked.stderr
    assert processes_with_env(TOKEN_ENV, token) == [child]  # --check ends nothing

    with open(site["logs"] / "second.log", "wb") as out:
        second = subprocess.Popen(_launcher(site), cwd=REPO, env=flower_env(site["home"]), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    _wait(lambda: "Starting Flower SuperNode" in (site["logs"] / "second.log").read_text(), "the second daemon")
    said = (site["logs"] / "second.log").read_text()
    assert f"ended 1 Flower process(es) left by this site's previous daemon (PID {first.pid}, gone)" in said
    assert processes_with_env(TOKEN_ENV, token) == []  # ended, by PID
    assert second.poll() is None and json.loads((site["state"] / PID_FILE).read_text())["pid"] == second.pid

    again = _run(_launcher(site), site)  # a second daemon on the same state-dir
    assert again.returncode == 2 and f"is still running (PID {second.pid}" in again.stderr
    assert second.poll() is None
