"""Tamper evidence for a site's privacy ledger: an HMAC chain under a key kept beside the ledger, not in it.

Why: the ledger is a JSON file an operator can open in an editor. A hand edit (`epsilon_budget` 12 -> 100, a
round deleted, `epsilon_spent` lowered) would otherwise be accepted as the site's own record. Every time the
site writes its ledger it appends one **link** to the ledger's `integrity.chain`:

    [seq, time, event, digest, mac]    digest = SHA-256 of the ledger's content (all but `integrity`), 128 bits
                                       mac    = HMAC-SHA256(key; previous mac, seq, time, event, digest), 128 bits

and seals the values an operator cares about (`integrity.head`: budget, δ, unit, ε spent, counts) with one more
HMAC, so a refusal can say *what* changed. The key is 32 random bytes in `state-dir/ledger-key` (0600),
written once, never inside the ledger. The site also logs the chain's head (`seq` and `mac`) in its own log
(`site-rounds.jsonl`), so an auditor can match a ledger with the rounds the site says it wrote.

What it detects: any change of the ledger's content by someone who does not hold the key (an editor, a
script, a copy of another site's ledger); a chain removed or cut in the middle once a key exists; a chained
ledger whose key is missing. What it does **not** detect: a writer who reads `ledger-key` (the site's own
account or root) can re-seal anything; a rollback of ledger *and* key together to an earlier copy is a valid
pair (the site's log, which records the heads, shows it; a backup restored this way under-counts); a ledger
and key deleted together leave no ledger, which `common.privacy.new_ledger` refuses to replace silently.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import load_or_create_key, read_key

log = logging.getLogger("fedpath.site")

KEY_FILE = "ledger-key"
BLOCK = "integrity"
TAG_HEX = 32  # 128-bit digests and MACs: ample against forgery, half the bytes per link
# The values a refusal names when the content no longer matches the head: what an editor would change.
HEAD_VALUES = ("site_id", "delta", "unit", "epsilon_budget", "epsilon_spent")
HEAD_COUNTS = ("rounds", "refusals", "budget_changes", "jobs", "runs")


class IntegrityError(ValueError):
    """The ledger does not verify against its key. `digest` is the content's digest now (for accept-ledger-edit)."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


@dataclass(frozen=True)
class Head:
    """Where a verified ledger's chain stands: `seq` links written, the last MAC, and how the chain began."""

    seq: int
    mac: str
    time: float
    began: str  # the first link's event: "created ...", "adopted ..."
    began_at: float

    def short(self) -> str:
        return f"link {self.seq} {self.mac[:16]}"


def content_digest(data: dict[str, Any]) -> str:
    """SHA-256 of the ledger's content as JSON will store it (everything but the integrity block)."""
    content = {k: v for k, v in data.items() if k != BLOCK}
    stored = json.loads(json.dumps(content))  # what a reader gets back: int keys as text, tuples as lists
    return hashlib.sha256(json.dumps(stored, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def head_values(data: dict[str, Any]) -> dict[str, Any]:
    values = {k: data.get(k) for k in HEAD_VALUES}
    values.update({k: len(data.get(k) or ()) for k in HEAD_COUNTS})
    return json.loads(json.dumps(values))


def ledger_key(state_dir: Path, create: bool) -> bytes | None:
    """The site's ledger key (created on the first write when `create`); None when there is none yet."""
    path = Path(state_dir) / KEY_FILE
    return load_or_create_key(path) if create else read_key(path)


def seal(data: dict[str, Any], key: bytes, event: str, now: float | None = None) -> dict[str, Any]:
    """`data` with one more link in its chain (the previous chain is taken from `data`'s block)."""
    block = dict(data.get(BLOCK) or {})
    chain = [list(link) for link in block.get("chain", [])]
    prev = chain[-1][4] if chain else ""
    seq, at, digest = len(chain), round(time.time() if now is None else now, 3), content_digest(data)[:TAG_HEX]
    chain.append([seq, at, event, digest, _mac(key, prev, seq, at, event, digest)])
    values = head_values(data)
    block.update(chain=chain, head={"values": values, "mac": _head_mac(key, chain[-1][4], values)})
    return {**{k: v for k, v in data.items() if k != BLOCK}, BLOCK: block}


def verify(data: dict[str, Any], key: bytes | None) -> Head | None:
    """The chain's head when `data` verifies under `key`; None for a ledger never chained (and no key yet).

    Raises IntegrityError saying what does not hold.
    """
    digest = content_digest(data)[:TAG_HEX]
    block = data.get(BLOCK)
    if block is None:
        if key is None:
            return None  # written before fedpath chained its ledgers: the site adopts it once, saying so
        raise IntegrityError("it has no integrity chain, but this site has a ledger key (state-dir/ledger-key): "
                             "the chain was removed from the file", digest)
    if key is None:
        raise IntegrityError("its integrity key state-dir/ledger-key is missing (it was deleted, or the ledger was "
                             "copied without it)", digest)
    try:
        chain, head = [list(link) for link in block["chain"]], block["head"]
        broken = _first_broken_link(chain, key)
        values, head_mac = head["values"], head["mac"]
    except (KeyError, TypeError, ValueError, IndexError):
        raise IntegrityError("its integrity block is malformed", digest) from None
    if broken is not None:
        raise IntegrityError(f"its integrity chain does not verify from link {broken} of {len(chain)} on (links were "
                             "changed, removed or made with another key)", digest)
    if not hmac.compare_digest(str(head_mac), _head_mac(key, chain[-1][4], values)):
        raise IntegrityError("the values sealed with its last link were changed", digest)
    if chain[-1][3] != digest:
        raise IntegrityError(_what_changed(values, head_values(data), chain[-1]), digest)
    return head_of(block)


def head_of(block: dict[str, Any]) -> Head:
    """The head of a chain this process sealed or verified (no check here: `verify` is the check)."""
    chain = block["chain"]
    return Head(seq=chain[-1][0], mac=chain[-1][4], time=chain[-1][1], began=chain[0][2], began_at=chain[0][1])


def check(path: Path, data: dict[str, Any], accept_edit: str, who: str) -> tuple[Head | None, list[str]]:
    """Verify the ledger at `path` (already parsed into `data`) under its key.

    Returns its head (None when it has none yet) and the events its next write must record: the adoption of
    a ledger from before the chain, or an edit its operator accepted (`accept_edit`: at least 16 hex digits of
    the content digest the refusal printed). Raises IntegrityError with the refusal and its fix.
    """
    try:
        head = verify(data, ledger_key(path.parent, create=False))
    except IntegrityError as err:
        if len(accept_edit) >= 16 and err.digest.startswith(accept_edit.lower()):
            log.warning("privacy ledger %s: %s; accepted as it is now (accept-ledger-edit=%s), re-sealed and recorded",
                        path, err, accept_edit)
            return None, [f"edit accepted by {who} (accept-ledger-edit={accept_edit}): {err}"]
        raise IntegrityError(tampered_message(path, err), err.digest) from None
    if head is None:
        log.warning("privacy ledger %s has no integrity chain (written before fedpath sealed its ledgers): the site "
                    "adopts it as it is now at its next write; an edit made before then cannot be detected", path)
        return None, [f"adopted by {who}: a ledger without an integrity chain, sealed as found"]
    return head, []


def tampered_message(path: Path, err: IntegrityError) -> str:
    """The refusal of a ledger that does not verify, with the fix (docs/TROUBLESHOOTING.md lists it)."""
    return (
        f"privacy ledger {path} failed its integrity check: {err}. The site refuses to use it: a ledger changed "
        "by hand could understate what the site has spent. Restore privacy-ledger.json and ledger-key together from "
        "a backup, or undo the edit. A budget changes only through the node config (epsilon-budget; a raise needs "
        'accept-budget-change="OLD->NEW"), never in the file. If the data-protection officer changed the ledger '
        f'deliberately, accept it exactly as it is now with accept-ledger-edit="{err.digest[:16]}" in the node '
        "config (the acceptance is recorded in the ledger)"
    )


def _first_broken_link(chain: list[list[Any]], key: bytes) -> int | None:
    if not chain:
        return 0
    prev = ""
    for index, (seq, at, event, digest, mac) in enumerate(chain):
        if seq != index or not hmac.compare_digest(str(mac), _mac(key, prev, seq, at, str(event), str(digest))):
            return index
        prev = mac
    return None


def _what_changed(sealed: dict[str, Any], now: dict[str, Any], link: list[Any]) -> str:
    changes = [f"{k} is {now.get(k)!r} in the file but was {sealed.get(k)!r}" for k in sorted(set(sealed) | set(now))
               if now.get(k) != sealed.get(k)]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(link[1])))
    what = "; ".join(changes) if changes else "its content (jobs, rounds or history) differs"
    return f"it was changed outside fedpath after the site last wrote it ({when}, link {link[0]}): {what}"


def _mac(key: bytes, prev: str, seq: int, at: float, event: str, digest: str) -> str:
    message = json.dumps([prev, seq, at, event, digest], separators=(",", ":")).encode()
    return hmac.new(key, b"fedpath-ledger-link:" + message, hashlib.sha256).hexdigest()[:TAG_HEX]


def _head_mac(key: bytes, last_mac: str, values: dict[str, Any]) -> str:
    message = json.dumps([last_mac, values], sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, b"fedpath-ledger-head:" + message, hashlib.sha256).hexdigest()[:TAG_HEX]
