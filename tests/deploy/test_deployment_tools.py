"""The deployment tools without a federation: launcher checks, TLS refusals, key material, config.

Fast: nothing here connects anywhere. The real TLS federation is tests/deploy/test_deployment.py.
"""

from __future__ import annotations

import math
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.config import parse_config_args
from PIL import Image

from client.identity import DEPLOYMENT_KEYS
from common.privacy.ledger import PrivacyLedger
from deploy import link_check, pki
from deploy.flower import is_loopback, split_address, write_connection
from deploy.site.command import SiteConfigError, build_parser, plan_site
from deploy.site.command import main as site_main
from deploy.site.node_config import format_node_config
from deploy.superlink import SuperLinkConfigError, plan_superlink
from deploy.superlink import build_parser as superlink_parser
from simulations.local_superlink import free_port
from tests.helpers.site_inputs import new_site

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def site_files(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "export"
    for shade, name in enumerate(("benign", "tumour")):  # two different images: copies under two classes are dropped
        (data / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 100, 150 + shade)).save(data / name / "x.png")
    keys = pki.make_site_keys(tmp_path / "keys", "site-a")
    certs = pki.make_test_pki(tmp_path / "certs")
    return {"data": data, "state": tmp_path / "state", "key": keys.private_key, "ca": certs.ca_cert}


def node_config(files: dict[str, Path], **override: object) -> str:
    values: dict[str, object] = {"data-path": str(files["data"]), "site-id": "site-a", "epsilon-budget": 8.0,
                                 "delta": 1e-5, "state-dir": str(files["state"]), **new_site()}
    values.update(override)
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in values.items() if v is not None)


def plan(files: dict[str, Path], *extra: str, config: str | None = None, key: bool = True, ca: bool = True):
    argv = ["--superlink", "127.0.0.1:9092", "--node-config", config if config is not None else node_config(files)]
    argv += ["--private-key", str(files["key"])] if key else []
    argv += ["--root-certificates", str(files["ca"])] if ca else []
    return plan_site(build_parser().parse_args([*argv, *extra]))


# -- node config --------------------------------------------------------------------------


@pytest.mark.parametrize("missing", DEPLOYMENT_KEYS)
def test_each_missing_node_config_key_is_named(site_files: dict[str, Path], missing: str) -> None:
    with pytest.raises(SiteConfigError, match=f"lacks {missing};"):
        plan(site_files, config=node_config(site_files, **{missing: None}))


@pytest.mark.slow  # a Python subprocess
def test_launcher_fails_at_once_naming_the_missing_key(site_files: dict[str, Path]) -> None:
    """The real command, as an operator or systemd runs it: exit 2 in seconds, nothing started."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "site", "--superlink", "127.0.0.1:9092", "--private-key",
         str(site_files["key"]), "--root-certificates", str(site_files["ca"]),
         "--node-config", node_config(site_files, **{"state-dir": None, "delta": None})],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "error: this SuperNode's --node-config lacks delta, state-dir" in done.stderr
    assert time.monotonic() - started < 30
    assert not site_files["state"].exists()


@pytest.mark.parametrize(("override", "message"), [
    ({"epsilon-budget": math.nan}, "finite epsilon-budget"),
    ({"epsilon-budget": math.inf}, "finite epsilon-budget"),
    ({"epsilon-budget": 0.0}, "finite epsilon-budget > 0"),
    ({"delta": 1.0}, "0 < delta < 1"),
    ({"epsilon-budget": "lots"}, "must be numbers"),
    ({"partition-id": 0}, "partition-id, which are for simulation"),
    ({"epsilon_budget": 8.0}, r"unknown keys \['epsilon_budget'\]"),
    ({"allow-non-private": "maybe"}, "allow-non-private must be true or false"),
    ({"epsilon-per-period": -1.0}, "epsilon-per-period must be a finite number >= 0"),
    ({"epsilon-per-period": 2.0, "period-days": 0.0}, "period-days must be a finite number > 0"),
])
def test_bad_node_config_values_are_refused(site_files: dict[str, Path], override: dict, message: str) -> None:
    with pytest.raises(SiteConfigError, match=message):
        plan(site_files, config=node_config(site_files, **override))


def test_unquoted_strings_get_a_hint(site_files: dict[str, Path]) -> None:
    with pytest.raises(SiteConfigError, match="Strings need double quotes"):
        plan(site_files, config=f"data-path={site_files['data']} site-id=site-a")


def test_node_config_file_is_accepted_and_paths_become_absolute(site_files: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "site-a.toml"
    toml.write_text('data-path = "export"\nsite-id = "site-a"\nepsilon-budget = 4\ndelta = 1e-5\n'
                    'state-dir = "state"\nallow-non-private = false\n'
                    + "".join(f'{k} = "{v}"\n' for k, v in new_site().items()))
    site = plan(site_files, config=str(toml))
    assert site.node_config["data-path"] == str(tmp_path / "export")  # the ClientApp runs elsewhere
    assert site.node_config["state-dir"] == str(tmp_path / "state")
    passed = site.command[site.command.index("--node-config") + 1]
    assert parse_config_args([passed]) == site.node_config  # what flower-supernode reads is what was checked


def test_node_config_round_trips_through_flowers_parser() -> None:
    config = {"data-path": "/srv/my export/x", "site-id": "site-a", "epsilon-budget": 8, "delta": 1e-5,
              "state-dir": "/var/lib/fedpath/a", "strict": True, "allow-non-private": False}
    assert parse_config_args([format_node_config(config)]) == config


def test_missing_data_foreign_ledger_and_state_inside_data_are_refused(site_files: dict[str, Path]) -> None:
    with pytest.raises(SiteConfigError, match="data-path .* does not exist"):
        plan(site_files, config=node_config(site_files, **{"data-path": str(site_files["data"] / "nope")}))
    for state in (site_files["data"] / "benign", site_files["data"].parent):
        with pytest.raises(SiteConfigError, match="must be separate, neither inside the other"):
            plan(site_files, config=node_config(site_files, **{"state-dir": str(state)}))
    PrivacyLedger.open(site_files["state"], "site-b", 1e-5, 8.0).save()  # another site's ledger
    with pytest.raises(SiteConfigError, match="belongs to site 'site-b'"):
        plan(site_files)


def test_valid_site_plan(site_files: dict[str, Path]) -> None:
    ledger = PrivacyLedger.open(site_files["state"], "site-a", 1e-5, 8.0)
    ledger.save()
    site = plan(site_files, "--runtime-port", "9301")
    command = site.command
    assert Path(command[0]).name == "flower-supernode"
    assert command[command.index("--root-certificates") + 1] == str(site_files["ca"].resolve())
    assert command[command.index("--auth-supernode-private-key") + 1] == str(site_files["key"].resolve())
    assert "--insecure" not in command
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "9301"
    assert site.env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert site.env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert site.env["FLWR_HOME"] == str(site_files["state"].resolve() / "flwr-home")
    assert any("epsilon 0.000 of 8 spent in 0 round(s)" in note for note in site.notes)
    assert any(note.startswith("data: ") and "2 classes (benign 1, tumour 1)" in note for note in site.notes)
    assert site.link is not None and site.link.address == "127.0.0.1:9092"
    assert site.link.fingerprint == pki.openssh_fingerprint(pki.check_site_private_key(site_files["key"]))


def test_optional_node_config_keys_reach_the_supernode(site_files: dict[str, Path]) -> None:
    """Every site setting the ClientApp reads must be in the node config flower-supernode gets."""
    site = plan(site_files, config=node_config(site_files, **{"epsilon-per-job": 2.0, "val-fraction": 0.2,
                                                              "epsilon-per-period": 3.0, "period-days": 7.0}))
    passed = parse_config_args([site.command[site.command.index("--node-config") + 1]])
    assert passed["epsilon-per-job"] == 2.0 and passed["val-fraction"] == 0.2
    assert passed["epsilon-per-period"] == 3.0 and passed["period-days"] == 7.0
    assert site_files["state"].stat().st_mode & 0o777 == 0o700  # the launcher creates state-dir private


# -- the site's data, through the ClientApp's own loader -----------------------------------


def test_empty_class_folder_is_refused_naming_it(site_files: dict[str, Path]) -> None:
    """Needs the loader to refuse empty class folders (common/data, another change than this one)."""
    (site_files["data"] / "stroma").mkdir()
    with pytest.raises(SiteConfigError, match=r"data-path cannot be trained on: .*stroma"):
        plan(site_files)


def test_loader_errors_stop_the_site_before_it_starts(site_files: dict[str, Path]) -> None:
    (site_files["data"] / "tumour" / "scan.png").write_bytes(b"not an image")
    plan(site_files)  # strict=false: the loader skips and counts it
    with pytest.raises(SiteConfigError, match=r"data-path cannot be trained on: .*scan\.png"):
        plan(site_files, config=node_config(site_files) + " strict=true")


def test_check_prints_the_command_and_starts_nothing(site_files: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--superlink", "127.0.0.1:9092", "--node-config", node_config(site_files), "--private-key",
            str(site_files["key"]), "--root-certificates", str(site_files["ca"]), "--check"]
    assert site_main(argv) == 0
    out = capsys.readouterr()
    assert "flower-supernode --superlink 127.0.0.1:9092" in out.out and "fedpath site site-a" in out.err


# -- TLS and authentication: secure unless explicitly, locally, not --------------------------


def test_site_refuses_to_run_without_a_key(site_files: dict[str, Path]) -> None:
    with pytest.raises(SiteConfigError, match="--private-key is required"):
        plan(site_files, key=False)


def test_site_refuses_plaintext_unless_the_local_testing_flag(site_files: dict[str, Path]) -> None:
    with pytest.raises(SiteConfigError, match="cannot be combined"):
        plan(site_files, "--insecure-local-testing")
    site = plan(site_files, "--insecure-local-testing", key=False, ca=False)
    assert "--insecure" in site.command and "--auth-supernode-private-key" not in site.command
    argv = ["--superlink", "10.1.2.3:9092", "--node-config", node_config(site_files), "--insecure-local-testing"]
    with pytest.raises(SiteConfigError, match="only allowed to a loopback address"):
        plan_site(build_parser().parse_args(argv))


def test_mistyped_key_path_says_check_the_path_before_making_a_new_key(site_files: dict[str, Path]) -> None:
    typo = site_files["key"].with_name("site-aa.key")
    with pytest.raises(SiteConfigError, match="Check the path first") as info:
        plan_site(build_parser().parse_args(["--superlink", "127.0.0.1:1", "--node-config", node_config(site_files),
                                             "--private-key", str(typo), "--root-certificates", str(site_files["ca"])]))
    message = str(info.value)
    assert "Check the path first" in message and f"keys in {typo.parent}: site-a.key" in message
    assert message.index("Check the path") < message.index("site-keys")  # the typo before a new, unregistered key


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip(reason="ssh-keygen (OpenSSH client) is not installed")
    keys = pki.make_site_keys(tmp_path, "site-a")
    printed = subprocess.run(["ssh-keygen", "-lf", str(keys.public_key)], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    assert pki.openssh_fingerprint(pki.check_site_private_key(keys.private_key)) == printed


def test_link_check_of_an_unreachable_superlink(site_files: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens: --check-link says so (69); a real start would leave it to the SuperNode's retries."""
    argv = ["--superlink", f"127.0.0.1:{free_port()}", "--node-config", node_config(site_files), "--private-key",
            str(site_files["key"]), "--root-certificates", str(site_files["ca"]), "--check-link"]
    assert site_main(argv) == 69
    assert "error: cannot reach 127.0.0.1:" in capsys.readouterr().err


def test_link_check_refuses_a_superlink_certified_by_another_ca(site_files: dict[str, Path], tmp_path: Path) -> None:
    other = pki.make_test_pki(tmp_path / "other-ca")  # a TLS server whose certificate our CA did not sign
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(other.server_cert, other.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass  # the client aborts the handshake

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    key = pki.check_site_private_key(site_files["key"])
    try:
        with pytest.raises(link_check.LinkConfigError, match="--root-certificates must be the CA certificate"):
            link_check.check_link(f"127.0.0.1:{port}", site_files["ca"], key, 0)
    finally:
        listener.close()
        thread.join(timeout=10)


def test_site_rejects_a_bad_root_certificate_or_key(site_files: dict[str, Path], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(SiteConfigError, match="--root-certificates: .* is not a PEM certificate"):
        plan_site(build_parser().parse_args(["--superlink", "127.0.0.1:1", "--node-config", node_config(site_files),
                                             "--private-key", str(site_files["key"]), "--root-certificates",
                                             str(bogus)]))
    with pytest.raises(SiteConfigError, match="--private-key: .* is not an unencrypted OpenSSH private key"):
        plan_site(build_parser().parse_args(["--superlink", "127.0.0.1:1", "--node-config", node_config(site_files),
                                             "--private-key", str(site_files["ca"])]))


def test_superlink_requires_tls_and_turns_on_supernode_auth(tmp_path: Path, site_files: dict[str, Path]) -> None:
    parse = superlink_parser().parse_args
    with pytest.raises(SuperLinkConfigError, match="TLS is required"):
        plan_superlink(parse(["--state-dir", str(tmp_path / "link")]))
    with pytest.raises(SuperLinkConfigError, match="only allowed on a loopback --host"):
        plan_superlink(parse(["--state-dir", str(tmp_path / "link"), "--host", "0.0.0.0", "--insecure-local-testing"]))
    command, env, workdir = plan_superlink(parse(["--state-dir", str(tmp_path / "link"), "--host", "0.0.0.0",
                                                  "--certs", str(site_files["ca"].parent)]))
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation"):
        assert flag in command
    assert "--insecure" not in command and command[command.index("--database") + 1] == str(workdir / "superlink.db")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    insecure, _, _ = plan_superlink(parse(["--state-dir", str(tmp_path / "l2"), "--insecure-local-testing"]))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


# -- key material and the flwr connection ------------------------------------------------------


def test_test_pki_server_certificate_is_signed_by_the_ca_and_names_the_link(tmp_path: Path) -> None:
    made = pki.make_test_pki(tmp_path / "certs", hostnames=["link.example.org"], ips=["10.0.0.5"])
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "link.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1", "10.0.0.5"} <= {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    for secret in (made.ca_key, made.server_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        pki.make_test_pki(tmp_path / "certs")


def test_site_keys_are_what_flower_loads(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    keys = pki.make_site_keys(tmp_path, "site-a")
    assert isinstance(pki.check_site_private_key(keys.private_key), ec.EllipticCurvePrivateKey)
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert try_load_public_key(keys.public_key)  # the loader `flwr supernode register` uses
    with pytest.raises(ValueError, match="without spaces or slashes"):
        pki.make_site_keys(tmp_path, "../x")


def test_connection_is_read_back_by_flower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           site_files: dict[str, Path]) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    write_connection(home, "fedpath", "127.0.0.1:9092", site_files["ca"])
    monkeypatch.setenv("FLWR_HOME", str(home))
    connection = read_superlink_connection("fedpath")
    assert connection.address == "127.0.0.1:9092"
    assert connection.root_certificates == str(site_files["ca"].resolve())
    assert connection.insecure is False
    assert read_superlink_connection("local").address == ":local:"  # the rest is kept
    assert read_superlink_connection(None).name == "local"  # default unchanged unless asked


def test_addresses() -> None:
    assert split_address("[::1]:9092") == ("::1", 9092) and split_address("link.example.org:1") == ("link.example.org", 1)
    for bad in ("https://x:1", "x", "x:0", ":80"):
        with pytest.raises(ValueError, match=f"address {re.escape(repr(bad))} must be host:port"):
            split_address(bad)
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("10.0.0.1") and not is_loopback("link.example.org")


@pytest.mark.slow  # a Python subprocess
def test_deploy_usage_lists_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "deploy"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and "register" in done.stderr and "superlink" in done.stderr
    assert "sites" in done.stderr
