"""Key material for a deployment: a test CA with a SuperLink certificate, and site key pairs.

Two different things, easy to confuse:

* **TLS** (transport encryption, the SuperLink proves who it is): the SuperLink holds a
  certificate and private key signed by a CA; every SuperNode and the coordinator's `flwr`
  CLI verify it against that CA's certificate (`--root-certificates`, `root-certificates`).
  `test-pki` makes a throwaway CA for testing on one machine; production uses the
  hospital network's own PKI (docs/DEPLOYMENT.md).
* **SuperNode authentication** (a site proves who it is): each site has an EC key pair in
  OpenSSH format. The private key never leaves the site (`flower-supernode
  --auth-supernode-private-key`); the public key is registered with the SuperLink
  (`flwr supernode register`), which then accepts only SuperNodes whose requests are signed
  by a registered key.

    python -m deploy test-pki --out certs/ [--hostname link.example.org] [--ip 10.0.0.5]
    python -m deploy site-keys --out keys/ --site-id site-a
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Always in the SuperLink certificate: the SuperLink's own SuperExec reaches its Runtime API
# on the loopback address (Flower replaces a bind-all --host by 127.0.0.1), over TLS.
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TestPki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SiteKeys:
    private_key: Path
    public_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; refusing to overwrite key material (pass --force to replace it)"
        )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_test_pki(out: Path, hostnames: Sequence[str] = (), ips: Sequence[str] = (), days: int = 365,
                  force: bool = False) -> TestPki:
    """A self-made CA (`ca.crt`, `ca.key`) and a SuperLink certificate it signed (`server.*`).

    The server certificate names localhost, 127.0.0.1 and ::1 plus `hostnames` and `ips`:
    every name or address SuperNodes and the `flwr` CLI use to reach the SuperLink.
    """
    out = Path(out)
    pki = TestPki(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")
    _refuse_overwrite([pki.ca_cert, pki.ca_key, pki.server_cert, pki.server_key], force)
    names = list(dict.fromkeys([*LOOPBACK_NAMES, *hostnames]))
    addresses = [ipaddress.ip_address(a) for a in dict.fromkeys([*LOOPBACK_IPS, *ips])]
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpath test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fedpath test CA (not for production)")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1] if hostnames else "localhost")]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(n) for n in names),
                                                    *(x509.IPAddress(a) for a in addresses)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_private(pki.ca_key, _pem_key(ca_key))
    _write_private(pki.server_key, _pem_key(server_key))
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return pki


def make_site_keys(out: Path, site_id: str, force: bool = False) -> SiteKeys:
    """An EC P-384 key pair in OpenSSH format: `<site-id>.key` (0600) and `<site-id>.pub`."""
    if not site_id or any(c in site_id for c in "/\\ \t\n"):
        raise ValueError(f"site id {site_id!r} must be non-empty, without spaces or slashes")
    out = Path(out)
    keys = SiteKeys(out / f"{site_id}.key", out / f"{site_id}.pub")
    _refuse_overwrite([keys.private_key, keys.public_key], force)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(keys.private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    keys.public_key.write_bytes(public + f" fedpath-{site_id}\n".encode())
    return keys


def check_root_certificates(path: Path) -> list[x509.Certificate]:
    """The PEM certificates in `path`, or a ValueError saying what is wrong with the file."""
    if not path.is_file():
        raise ValueError(f"root certificate file {path} does not exist")
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as err:
        raise ValueError(f"{path} is not a PEM certificate (bundle): {err}") from None
    return certs


def openssh_fingerprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """`SHA256:...`, exactly what `ssh-keygen -lf <key>.pub` prints for the key.

    The one identifier a site, the coordinator and `python -m deploy sites` can all compare
    (over the phone, too) without sending key material around.
    """
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    blob = base64.b64decode(public.public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _missing_key_message(path: Path) -> str:
    """Why the key is missing, steering away from making a new (then unregistered) key.

    A typo in `--private-key` is far likelier than a lost key, and a new key pair is useless
    until the coordinator registers it; so name the keys that do exist near the given path.
    """
    folder = path.parent
    try:
        keys = sorted(p.name for p in folder.iterdir()
                      if p.is_file() and (p.suffix == ".key" or (p.name.startswith("id_") and p.suffix != ".pub")))
        found = f"keys in {folder}: {', '.join(keys)}" if keys else f"{folder} holds no *.key file"
    except FileNotFoundError:
        found = f"the directory {folder} does not exist either"
    except OSError as err:
        found = f"{folder} cannot be listed: {err.strerror}"
    return (
        f"SuperNode private key {path} does not exist. Check the path first (a typo? {found}): the SuperLink "
        "accepts only the key whose .pub the coordinator registered. Make a new pair (python -m deploy site-keys) "
        "only if the registered key is really lost, and then have the new .pub registered before the site can connect"
    )


def check_site_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The site's OpenSSH EC private key, as flower-supernode will load it, or a ValueError."""
    if not path.is_file():
        raise ValueError(_missing_key_message(path))
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not an unencrypted OpenSSH private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}; Flower SuperNode authentication needs an EC "
                         "(NIST P-256/384/521) key")
    return key


def main_test_pki(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy test-pki",
                                     description="Make a test CA and a SuperLink TLS certificate (not for production).")
    parser.add_argument("--out", type=Path, required=True, help="directory for ca.crt, ca.key, server.crt, server.key")
    parser.add_argument("--hostname", action="append", default=[],
                        help="DNS name the SuperLink is reached by (repeatable; localhost is always included)")
    parser.add_argument("--ip", action="append", default=[],
                        help="IP address the SuperLink is reached by (repeatable; 127.0.0.1 and ::1 always included)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        pki = make_test_pki(args.out, args.hostname, args.ip, args.days, args.force)
    except (FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"CA certificate (give it to every site and to the coordinator's flwr CLI): {pki.ca_cert}")
    print(f"CA private key (keep offline; only signs certificates):                 {pki.ca_key}")
    print(f"SuperLink certificate and key (for flower-superlink --ssl-*):          {pki.server_cert}, {pki.server_key}")
    return 0


def main_site_keys(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy site-keys",
                                     description="Make a site's SuperNode authentication key pair.")
    parser.add_argument("--out", type=Path, required=True, help="directory for <site-id>.key and <site-id>.pub")
    parser.add_argument("--site-id", required=True, help="the site's id (file names and key comment)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        keys = make_site_keys(args.out, args.site_id, args.force)
    except (FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"private key (stays at the site, mode 0600): {keys.private_key}")
    print(f"public key (send to the coordinator to register): {keys.public_key}")
    return 0
