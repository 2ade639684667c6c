"""`python -m deploy site` against a real TLS SuperLink: an unregistered key vs a restart too soon.

Flower 1.42's SuperNode prints the same `Failed to activate SuperNode` for both (and exits 1);
the launcher must tell them apart before it starts the SuperNode, say what to do, and exit 77
(systemd: do not retry) for the key, 75 (retry) for the node still counted online. Real
processes only: the SuperLink, key registration and one SuperNode are started as
docs/DEPLOYMENT.md says; the crash is a SIGKILL. ~1 minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from PIL import Image

from deploy import link_check, pki
from deploy.flower import flower_env, write_connection
from deploy.pki import openssh_fingerprint
from deploy.register import list_sites, register_site
from deploy.site.command import main as site_main
from simulations.local_superlink import free_port
from simulations.processes import kill_processes_with_env
from tests.helpers.site_inputs import new_site

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = [sys.executable, "-m", "deploy"]
CONNECTION = "fedpath"


@dataclass
class Link:
    """A running SuperLink with site-a and site-b registered; `rogue` has a key nobody registered."""

    root: Path
    port: int
    homes: list[Path] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.root / "superlink" / "superlink.log").read_text(errors="replace")

    def key(self, site: str) -> Path:
        return self.root / "keys" / f"{site}.key"

    def fingerprint(self, site: str) -> str:
        return openssh_fingerprint(load_ssh_private_key(self.key(site).read_bytes(), None))

    def site_argv(self, site: str, *extra: str) -> list[str]:
        """`python -m deploy site ...` as an operator types it, for `site`'s key and its own state-dir."""
        state = self.root / "state" / site
        self.homes.append(state / "flwr-home")
        node_config = (f'data-path="{self.root / "data"}" site-id="{site}" epsilon-budget=8.0 delta=1e-5 '
                       f'state-dir="{state}" ' + " ".join(f'{k}="{v}"' for k, v in new_site().items()))
        return [*DEPLOY, "site", "--superlink", self.address, "--root-certificates", str(self.root / "certs" / "ca.crt"),
                "--private-key", str(self.key(site)), "--runtime-port", str(free_port()), "--node-config", node_config,
                *extra]

    def run(self, argv: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
                              env=flower_env())

    def sites(self) -> dict[str, dict]:
        done = self.run([*DEPLOY, "sites", "--connection", CONNECTION, "--flwr-home", str(self.root / "coordinator"),
                         "--format", "json", "--public-key", str(self.root / "keys" / "site-a.pub")])
        assert done.returncode == 0, done.stderr
        return {s["name"]: s for s in json.loads(done.stdout)["sites"]}

    def start(self, argv: list[str], log: Path, home: Path) -> subprocess.Popen[bytes]:
        self.homes.append(home)
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, cwd=REPO, env=flower_env(home), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.groups.append(process.pid)
        return process

    def kill(self, process: subprocess.Popen[bytes], home: Path) -> None:
        """SIGKILL the process group and everything of its Flower home: a crash, no deactivation."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_processes_with_env("FLWR_HOME", str(home), signal.SIGKILL, wait=5.0)
        process.wait(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    root = tmp_path_factory.mktemp("link-check")
    fed = Link(root, free_port())
    try:
        for c, name in enumerate(("benign", "tumour")):
            (root / "data" / name).mkdir(parents=True)
            for i in range(6):  # every image distinct: a copy under two classes would be dropped (issue 25)
                Image.new("RGB", (16, 16), (40 * i, 100 + 50 * c, 150)).save(root / "data" / name / f"p{i}.png")
        pki.make_test_pki(root / "certs")  # what `deploy test-pki` and `deploy site-keys` run
        for site in ("site-a", "site-b", "rogue"):
            pki.make_site_keys(root / "keys", site)
        (root / "logs").mkdir()
        link_home = root / "superlink" / "flwr-home"
        fed.start([*DEPLOY, "superlink", "--certs", str(root / "certs"), "--state-dir", str(root / "superlink"),
                   "--port", str(fed.port)], root / "logs" / "superlink.out", link_home)
        ca = ssl.create_default_context(cafile=str(root / "certs" / "ca.crt"))

        def up() -> bool:
            try:
                return httpx.get(f"https://{fed.address}/health", verify=ca, timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "the SuperLink")
        home = root / "coordinator"
        fed.homes.append(home)
        write_connection(home, CONNECTION, fed.address, root / "certs" / "ca.crt")  # `deploy connection`
        for site in ("site-a", "site-b"):
            register_site(root / "keys" / f"{site}.pub", site, CONNECTION, home)  # `deploy register`: flwr's CLI
        yield fed
    finally:
        for group in fed.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for home in fed.homes:
            kill_processes_with_env("FLWR_HOME", str(home), signal.SIGKILL, wait=5.0)


def test_unregistered_key_is_named_and_not_retried(link: Link) -> None:
    started = time.monotonic()
    done = link.run(link.site_argv("rogue"))  # a real start, as systemd's ExecStart runs it
    assert done.returncode == link_check.EXIT_UNREGISTERED, done.stderr
    assert "has no registration for this site's key" in done.stderr
    assert link.fingerprint("rogue") in done.stderr and "python -m deploy register" in done.stderr
    assert "RestartPreventExitStatus" in done.stderr
    assert "Starting Flower SuperNode" not in done.stdout + done.stderr  # refused before the daemon started
    assert time.monotonic() - started < 60
    assert "No SuperNode found with the given public key" in link.log  # what the SuperLink saw: the same cause


def test_registered_key_starts_and_a_restart_after_a_crash_is_told_apart(
        link: Link, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The launcher in-process (--check-link never execs): the SuperLink and the SuperNode are real processes.
    assert site_main(link.site_argv("site-a", "--check-link")[4:]) == 0
    assert f"key {link.fingerprint('site-a')} registered as node" in capsys.readouterr().err
    listed = link.sites()
    assert listed["site-a"]["fingerprint"] == link.fingerprint("site-a") and listed["site-a"]["key_file"] == "site-a.pub"
    assert listed["site-a"]["status"] != "online"  # the check released the node it activated
    assert listed["site-b"]["fingerprint"] == link.fingerprint("site-b") and not listed["site-b"]["key_file"]

    home = link.root / "state" / "site-a" / "flwr-home"
    log = link.root / "logs" / "site-a.log"
    daemon = link.start(link.site_argv("site-a"), log, home)  # the real start, right after the check
    wait_until(lambda: "SuperNode ID:" in log.read_text(errors="replace") or daemon.poll() is not None, 120,
               "site-a's SuperNode to connect")
    assert "SuperNode ID:" in log.read_text(errors="replace"), log.read_text()
    monkeypatch.setenv("FLWR_HOME", str(link.root / "coordinator"))
    assert {s.name: s.status for s in list_sites(CONNECTION)}["site-a"] == "online"
    link.kill(daemon, home)  # crash: no deactivation, the SuperLink still counts it online

    assert site_main(link.site_argv("site-a", "--check-link", "--activation-wait", "2")[4:]) \
        == link_check.EXIT_STILL_ONLINE
    told = capsys.readouterr().err
    assert "still counts its node online" in told and "stopped without SIGTERM" in told
    assert "has no registration" not in told
    assert "could not be activated" in link.log  # the SuperLink's side of it


def test_the_check_waits_until_the_superlink_releases_a_crashed_node(link: Link) -> None:
    """A node left online (activated with Flower's shortest interval, 10 s, never deactivated) is released."""
    from flwr.proto.fleet_pb2 import ActivateNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    key = load_ssh_private_key(link.key("site-b").read_bytes(), None)
    with link_check._fleet_client(link.address, link.root / "certs" / "ca.crt", key) as client:  # noqa: SLF001
        client.ActivateNode(ActivateNodeRequest(public_key=public_key_to_bytes(key.public_key()),
                                                heartbeat_interval=10))  # then "crashes": online for 2 x 10 s
    said: list[str] = []
    result = link_check.check_link(link.address, link.root / "certs" / "ca.crt", key, 40, said.append)
    assert result.outcome == link_check.READY and result.node_id is not None, result
    assert 5 < result.waited < 40 and "waiting up to 40 s" in said[0]
    again = link_check.check_link(link.address, link.root / "certs" / "ca.crt", key, 0, said.append)
    assert again.outcome == link_check.READY and again.waited < 5  # the check left the node free
