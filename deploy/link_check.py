"""Before a site's SuperNode starts: does the SuperLink know its key, and is its node free?

Flower 1.42's `flower-supernode` fails in the same words for two different problems:

    Exit Code: 305
    Failed to initialize the connection to the SuperLink.
    [code: 2004] Failed to activate SuperNode.
    The SuperNode could not establish a connection to the SuperLink.

(and then exits with status **1**, not 305: `flwr_exit` prints the code but calls
`sys.exit(1)` for every error code). The causes need opposite actions:

* the key is **not registered** (never, revoked, or the wrong `--private-key`): only the
  coordinator can fix it, so restarting is pointless;
* the node is **still online** on the SuperLink: the site was stopped without SIGTERM (crash,
  `kill -9`, power loss) less than 2 x 30 s ago, and Flower releases it once two heartbeat
  intervals pass without a heartbeat; restarting a little later works. (Another SuperNode
  running with the same key looks the same, and never clears.)

Only the SuperLink's log says which (`No SuperNode found with the given public key` vs
`SuperNode with node ID ... could not be activated`). A site can still tell them apart through
the Fleet API it uses anyway, signed with its own key, exactly as its SuperNode would:

1. `ActivateNode` with heartbeat interval 0, outside Flower's bounds [10, 1800] s. Flower
   1.42's handler looks the key up *before* it checks the interval, so an unregistered key
   gets `2004 Failed to activate SuperNode` and a registered one `2003 Invalid heartbeat
   interval`; the node is not activated either way (tests/deploy/test_site_link_check.py checks
   this against a real SuperLink, so a Flower upgrade that changes it fails there).
2. For a registered key, a real `ActivateNode` (Flower's 30 s interval): success means the
   node was free, and it is deactivated again at once (what a SuperNode does on SIGTERM), so
   the SuperNode started next activates it itself. `2004` means it is still counted online:
   poll until Flower releases it or `wait` seconds pass.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

if TYPE_CHECKING:
    from flwr.supernode.fleet_http_client import FleetHttpClient

# sysexits.h: EX_NOPERM, "not permitted": the SuperLink refuses this key and only the
# coordinator can change that. The systemd unit lists it in RestartPreventExitStatus=.
EXIT_UNREGISTERED = 77
# sysexits.h: EX_TEMPFAIL, "try again later": the node is still counted online. systemd restarts.
EXIT_STILL_ONLINE = 75

RELEASE_SECONDS = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL  # 60 s in Flower 1.42
DEFAULT_ACTIVATION_WAIT = RELEASE_SECONDS + 10
_POLL_SECONDS = 5.0
_REQUEST_TIMEOUT = 15.0
_ACTIVATION_FAILED = 2004  # ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED
_INVALID_INTERVAL = 2003  # ApiErrorCode.FLEET_INVALID_HEARTBEAT_INTERVAL

READY, UNREGISTERED, STILL_ONLINE, UNREACHABLE, UNEXPECTED = (
    "ready", "unregistered", "still-online", "unreachable", "unexpected")


class LinkConfigError(ValueError):
    """The site's TLS settings or clock keep it from talking to the SuperLink at all."""


@dataclass(frozen=True)
class LinkCheck:
    """What the SuperLink said about this site's key; `detail` is for the operator."""

    outcome: str
    detail: str
    node_id: int | None = None
    waited: float = 0.0


def _fleet_client(address: str, root_certificates: Path | None, key: ec.EllipticCurvePrivateKey) -> FleetHttpClient:
    """Flower's own Fleet API client, signing every request with the site's key like a SuperNode."""
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    # As FleetHttpClient.from_server_address builds it for a TLS SuperNode, with a shorter timeout.
    return FleetHttpClient(
        f"https://{address}",
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                      NodeAuthHttpInterceptor(key, key.public_key())],
        verify=ssl.create_default_context(cafile=str(root_certificates)) if root_certificates else True,
        timeout=_REQUEST_TIMEOUT,
    )


def _error_code(err: httpx.HTTPStatusError) -> tuple[int | None, str]:
    """(Flower's API error code or None, its message) from an error response."""
    from flwr.supercore.error import FlowerError

    flower = FlowerError.from_json(err.response.text)
    if flower is not None:
        return flower.code, flower.message
    return None, f"HTTP {err.response.status_code}: {err.response.text[:300]}"


def _activate(client: FleetHttpClient, public_key: bytes, interval: float) -> int | None:
    """Node id on success; None when the SuperLink answers 2004 (not registered, or online)."""
    from flwr.proto.fleet_pb2 import ActivateNodeRequest

    try:
        return int(client.ActivateNode(ActivateNodeRequest(public_key=public_key, heartbeat_interval=interval)).node_id)
    except httpx.HTTPStatusError as err:
        if _error_code(err)[0] == _ACTIVATION_FAILED:
            return None
        raise


def _deactivate(client: FleetHttpClient, node_id: int) -> None:
    """Release the node the check activated, so the SuperNode can activate it right away."""
    from flwr.proto.fleet_pb2 import DeactivateNodeRequest

    client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))


def is_registered(client: FleetHttpClient, public_key: bytes) -> bool:
    """Whether the SuperLink has this key registered, without activating its node."""
    try:
        node_id = _activate(client, public_key, 0.0)
    except httpx.HTTPStatusError as err:
        if _error_code(err)[0] == _INVALID_INTERVAL:
            return True  # found the key, then refused the interval
        raise
    if node_id is not None:  # a Flower that accepts interval 0 activated it: registered; undo
        _deactivate(client, node_id)
        return True
    return False


def _wait_for_release(client: FleetHttpClient, public_key: bytes, wait: float,
                      say: Callable[[str], None]) -> tuple[int | None, float]:
    """Activate as soon as the SuperLink releases the node; (node id or None, seconds waited)."""
    started = time.monotonic()
    node_id = _activate(client, public_key, HEARTBEAT_DEFAULT_INTERVAL)
    if node_id is None and wait > 0:
        say(f"the SuperLink still counts this site's node online; waiting up to {wait:.0f} s for it to be released "
            f"(Flower marks a node offline {RELEASE_SECONDS:.0f} s after its last heartbeat)")
    while node_id is None and time.monotonic() - started < wait:
        time.sleep(min(_POLL_SECONDS, max(0.0, wait - (time.monotonic() - started))))
        node_id = _activate(client, public_key, HEARTBEAT_DEFAULT_INTERVAL)
    return node_id, time.monotonic() - started


def check_link(address: str, root_certificates: Path | None, key: ec.EllipticCurvePrivateKey, wait: float,
               say: Callable[[str], None] = print) -> LinkCheck:
    """Ask the SuperLink about this key (see the module docstring); LinkConfigError for TLS/clock problems."""
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    public_key = public_key_to_bytes(key.public_key())
    try:
        with _fleet_client(address, root_certificates, key) as client:
            if not is_registered(client, public_key):
                return LinkCheck(UNREGISTERED, "the SuperLink has no registration for this key")
            node_id, waited = _wait_for_release(client, public_key, wait, say)
            if node_id is None:
                return LinkCheck(STILL_ONLINE, f"still counted online after {waited:.0f} s", waited=waited)
            _deactivate(client, node_id)
            return LinkCheck(READY, f"registered as node {node_id}, free", node_id, waited)
    except httpx.ConnectError as err:
        if "[SSL" in str(err):
            raise LinkConfigError(
                f"TLS with the SuperLink {address} failed ({err}): --root-certificates must be the CA certificate that "
                f"signed the SuperLink's certificate, and that certificate must name {address.rsplit(':', 1)[0]}"
            ) from None
        return LinkCheck(UNREACHABLE, f"cannot reach {address}: {err}")
    except httpx.TransportError as err:
        return LinkCheck(UNREACHABLE, f"cannot reach {address}: {type(err).__name__} {err}")
    except httpx.HTTPStatusError as err:
        code, message = _error_code(err)
        if err.response.status_code == httpx.codes.UNAUTHORIZED and code is None:
            raise LinkConfigError(
                f"the SuperLink {address} rejected this site's signed request ({message}). The signature carries a "
                "timestamp the SuperLink accepts only within a few minutes of its own clock: check this machine's "
                "clock (timedatectl; enable NTP)"
            ) from None
        return LinkCheck(UNEXPECTED, f"unexpected answer from {address}: [code {code}] {message}")
