"""When a site may start a privacy ledger at ε 0: never by itself where it may have trained before.

Why: a site that finds no ledger cannot tell a new site from one whose ledger was lost (a fresh state-dir, a
deleted file, a machine rebuilt without its backup). Starting again at ε 0 would silently forget everything
it spent. So:

* a **deployed** site starts a ledger only when its operator acknowledges it in the node config:
  `accept-new-ledger="YYYY-MM-DD"`, today's date (the day before is accepted too, for a start across
  midnight). The date makes the acknowledgement deliberate and short-lived: a line left in a node config
  does not let a ledger lost next month start again silently. The acknowledgement is recorded as the first
  link of the new ledger's integrity chain. What the state-dir shows of an earlier life (its ledger key, its
  split key, trained rounds in its own log) is named in the refusal, so the operator restores a backup
  rather than acknowledging a reset;
* a **simulated** site (the experimenter plays every hospital; each run has its own state directory unless
  `ledger-dir` is set) starts a ledger freely, unless its directory shows an earlier life: then the fix is
  to delete that site's directory, which says deliberately that its spend starts again.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from common.paths import LEDGER_FILE, SITE_LOG, SPLIT_KEY_FILE
from common.privacy.integrity import KEY_FILE

ACK_KEY = "accept-new-ledger"


def parse_ack(text: str) -> dt.date | None:
    """accept-new-ledger's date; None when it is not YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text.strip()) if len(text.strip()) == 10 else None
    except ValueError:
        return None


def ack_problem(text: str, today: dt.date) -> str:
    """'' when `text` acknowledges a new ledger today, else why not."""
    day = parse_ack(text)
    if not text:
        return f'{ACK_KEY} is not set'
    if day is None:
        return f'{ACK_KEY}="{text}" is not a date YYYY-MM-DD'
    if day > today:
        return f'{ACK_KEY}="{text}" is in the future (today is {today.isoformat()})'
    if (today - day).days > 1:
        return (f'{ACK_KEY}="{text}" is from an earlier day: it acknowledges a new ledger only on the day it names '
                "(or the next), so that a line left in a node config cannot reset a ledger lost later")
    return ""


def earlier_life(state_dir: Path) -> list[str]:
    """What `state_dir` shows of a site that has run before: its ledger key, split key, trained rounds."""
    state = Path(state_dir)
    signs = []
    for name, what in ((KEY_FILE, "its ledger's integrity key"), (SPLIT_KEY_FILE, "its split key")):
        if (state / name).exists():
            since = dt.date.fromtimestamp((state / name).stat().st_mtime).isoformat()
            signs.append(f"{what} {state / name} (since {since})")
    trained = _trained_rounds(state / SITE_LOG)
    if trained:
        signs.append(f"{trained} round(s) trained under DP in its own log {state / SITE_LOG}")
    return signs


def new_ledger_problem(state_dir: Path, site_id: str, deployed: bool, ack: str,
                       today: dt.date | None = None) -> str:
    """'' when the site may start a ledger at ε 0 in `state_dir` (or already has one), else the refusal with its fix."""
    state = Path(state_dir)
    if (state / LEDGER_FILE).exists():
        return ""
    signs = earlier_life(state)
    if not deployed:
        if not signs:
            return ""
        return (f"simulated site {site_id} has no privacy ledger in {state}, but that directory has been used: "
                f"{'; '.join(signs)}. Its spend would start again at epsilon 0. Restore the ledger, or delete {state} "
                "to start this simulated site afresh")
    problem = ack_problem(ack, today or dt.date.today())
    if not problem:
        return ""
    seen = (f"This state-dir has been used before: {'; '.join(signs)}. " if signs else
            "Nothing in state-dir shows an earlier life, but a fresh or wiped state-dir looks the same. ")
    return (
        f"site {site_id} has no privacy ledger in {state}, so it would start at epsilon 0 ({problem}). {seen}"
        "If this site has trained before, its spend is in the lost ledger: restore privacy-ledger.json and ledger-key "
        "together from backup. If it is a new site (or its data-protection officer accepts that its spend restarts "
        f'from 0), acknowledge a new ledger with {ACK_KEY}="{(today or dt.date.today()).isoformat()}" (today\'s date) '
        "in its node config; the new ledger records it"
    )


def _trained_rounds(site_log: Path) -> int:
    if not site_log.exists():
        return 0
    count = 0
    for line in site_log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("status") == "trained" and (entry.get("metrics") or {}).get("dp"):
            count += 1
    return count
