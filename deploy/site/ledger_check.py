"""The site launcher's look at the privacy ledger: verified, and changed only by a real start, never by `--check`.

At a real start (`write=True`) the launcher records what the node config acknowledges: a budget change
(`accept-budget-change` for a raise), the adoption of a ledger from before the integrity chain, an accepted
edit (`accept-ledger-edit`), or a new ledger (`accept-new-ledger`, `common.privacy.new_ledger`), so the trail
holds it before the site trains. `--check` and `--check-link` only say what a start would record: the ledger
stays byte-identical. Every start prints what the ledger holds, its unit, its chain's head, whether the site
is exhausted, and every budget change.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy.site.node_config import SiteConfigError


def check_ledger(node_config: Mapping[str, Any], state: Path, unit: str, write: bool) -> list[str]:
    """Notes about the ledger in `state` (created or updated when `write`); SiteConfigError when it cannot be used."""
    from client.identity import parse_budget_change
    from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
    from common.privacy.new_ledger import ACK_KEY, new_ledger_problem

    site_id, ack = str(node_config["site-id"]), str(node_config.get(ACK_KEY, ""))
    if not (state / LEDGER_FILE).exists():
        problem = new_ledger_problem(state, site_id, deployed=True, ack=ack)
        if problem:
            raise SiteConfigError(problem)
        if not write:
            return [f"no privacy ledger yet in {state}: {ACK_KEY}={ack} acknowledges a new one, which a start "
                    "creates at epsilon 0 (--check writes nothing)"]
    try:
        ledger = PrivacyLedger.open(
            state, site_id, node_config["delta"], node_config["epsilon-budget"], unit=unit,
            accept_budget_change=parse_budget_change(str(node_config.get("accept-budget-change", ""))),
            accept_edit=str(node_config.get("accept-ledger-edit", "")), created=f"created ({ACK_KEY}={ack})",
        )
    except (LedgerError, KeyError, TypeError, ValueError) as err:
        raise SiteConfigError(f"the privacy ledger in state-dir cannot be used: {err}") from None
    notes = []
    if not ledger.path.exists():
        ledger.save("by the site launcher")
        notes.append(f"new privacy ledger {ledger.path} ({ACK_KEY}={ack}): this site starts at epsilon 0")
    elif ledger.needs_save and write:  # the operator's (acknowledged) change is on record before the site starts
        ledger.save("opened by the site launcher")
    elif ledger.needs_save:
        notes.append("a start would record in the ledger: " + "; ".join(
            [*ledger.pending, *(["the budget change below"] if ledger.budget_changed else [])])
            + " (--check writes nothing)")
    elif ack:
        notes.append(f"{ACK_KEY}={ack} is set, but this site has its ledger: the acknowledgement only matters for "
                     "a new ledger (remove the line)")
    return notes + _ledger_notes(ledger, node_config)


def _ledger_notes(ledger: Any, node_config: Mapping[str, Any]) -> list[str]:
    exhausted = (" -- EXHAUSTED: the lifetime budget is not above what is spent, so the site refuses every round"
                 if ledger.exhausted else "")
    notes = [
        f"privacy ledger {ledger.path}: epsilon {ledger.epsilon():.3f} of {node_config['epsilon-budget']:g} "
        f"spent in {len(ledger.rounds)} round(s) (delta={ledger.delta:g}, unit of privacy: one {ledger.unit})"
        + exhausted
    ]
    if ledger.head is not None:
        began = dt.datetime.fromtimestamp(ledger.head.began_at).strftime("%Y-%m-%d")
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(ledger.head.time))
        notes.append(f"ledger integrity chain verified: {ledger.head.short()} (last written {written}); began "
                     f"{began}: {ledger.head.began}")
    for change in ledger.budget_changes:
        notes.append(f"lifetime budget changed from {change['old']:g} to {change['new']:g} by {change['by']} "
                     f"({change['how']})")
    return notes
