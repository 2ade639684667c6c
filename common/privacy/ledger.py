"""A site's privacy ledger: the one Opacus accountant history that every round adds to.

Why a ledger and not a fresh `PrivacyEngine` per round: epsilon composes over everything
a site has ever released, across rounds, runs and restarts. Flower's Opacus example
reports the epsilon of one round; we keep the accountant's `state_dict` on the site's disk
and reload it before every round, so the epsilon reported is the cumulative spend.

Durability: the file is replaced atomically (temp file, fsync, rename, fsync of the
directory) under an exclusive lock, and a round's spend is committed before its update
leaves the site, so a crash can over-count but never under-count. A file that cannot be
parsed stops the site with an error: resetting it silently would forget real spending.

Tamper evidence (`common.privacy.integrity`): every write appends a link to an HMAC chain under the site's
ledger key (`state-dir/ledger-key`), and every read verifies it, so a hand edit is refused, not believed.
A ledger from before the chain is adopted once, on its first write, with a logged notice.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opacus.accountants import RDPAccountant

from common.files import atomic_write_json, open_private, private_dir
from common.paths import LEDGER_FILE
from common.privacy import integrity
from common.privacy.accounting import epsilon_of

log = logging.getLogger("fedpath.site")
__all__ = ["FORMAT", "LEDGER_FILE", "LedgerError", "PrivacyLedger", "site_lock"]

FORMAT = "fedpath-privacy-ledger/1"


class LedgerError(RuntimeError):
    """The ledger is unreadable or inconsistent; never resolved by resetting it."""


@dataclass
class PrivacyLedger:
    """Cumulative (epsilon, delta) spend of one site, backed by a JSON file.

    Besides the accountant history it keeps the site's audit trail: every job's grant
    (`jobs`, keyed by the run id that opened it), which job each run was charged to (`runs`, one
    job per run: `common.privacy.jobs`), every round, every refusal, and every change of the
    lifetime budget (`budget_changes`). The unit of privacy and δ are fixed once the site has a ledger.
    """

    path: Path
    site_id: str
    delta: float
    epsilon_budget: float
    history: list[tuple[float, float, int]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # Flower run id -> the job (key of `jobs`) it is bound to
    budget_changes: list[dict[str, Any]] = field(default_factory=list)
    unit: str = "patch"
    # True when `open` applied a new lifetime budget: the site (round or launcher) saves it, so the
    # audit trail holds the change; a mere reader never writes.
    budget_changed: bool = field(default=False, compare=False)
    # The integrity chain as read (None: a new or never-chained ledger), its verified head, and what the next
    # write must record before its own event (created, adopted, an acknowledged edit).
    chain_block: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    head: integrity.Head | None = field(default=None, compare=False)
    pending: list[str] = field(default_factory=list, compare=False)

    # -- accounting -------------------------------------------------------------------
    def epsilon(self) -> float:
        return epsilon_of(self.history, self.delta)

    def total_steps(self) -> int:
        return int(sum(h[2] for h in self.history))

    def position(self) -> int:
        """How many requests this site has answered (rounds + refusals): advances with every answer."""
        return len(self.rounds) + len(self.refusals)

    # -- persistence ------------------------------------------------------------------
    @classmethod
    def open(
        cls, state_dir: Path, site_id: str, delta: float, epsilon_budget: float, unit: str | None = None,
        accept_budget_change: tuple[float, float] | None = None, accept_edit: str = "", created: str = "created",
    ) -> PrivacyLedger:
        """Load the site's ledger, or start an empty one if the site has never trained.

        `unit` is the site's unit of privacy (the site always passes it; None only reads the
        recorded one, "patch" for a new ledger). A raised lifetime budget is refused unless `accept_budget_change` names exactly the
        old and the new value (the operator's acknowledgement); every change, raise or cut,
        is appended to `budget_changes` (saved with the ledger's next write). The integrity chain must
        verify (`accept_edit`: the content digest an operator acknowledged, accept-ledger-edit); a new
        ledger's first write records `created` (how it came to be).
        """
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return cls(path, site_id, delta, epsilon_budget, unit=unit or "patch", pending=[f"{created} by {_who()}"])
        data = _read(path)
        head, pending = _verified(path, data, accept_edit)
        if data.get("site_id") != site_id:
            raise LedgerError(
                f"{path} belongs to site {data.get('site_id')!r}, not {site_id!r}; each site needs its own state-dir"
            )
        if abs(float(data["delta"]) - delta) > 1e-15:
            raise LedgerError(
                f"{path} was accounted with delta={data['delta']}, but delta={delta} was asked for; "
                "changing delta mid-life would misstate the guarantee. Keep delta, or start a new site identity."
            )
        recorded_unit = str(data.get("unit", "patch"))
        if unit is not None and recorded_unit != unit:  # None: only reading what is recorded
            raise LedgerError(
                f"{path} was accounted with the privacy unit {recorded_unit!r}, but {unit!r} was asked for; "
                "a site's unit of privacy cannot change once it has spent budget (its epsilon would then mean two "
                "things). Keep the unit, or start a new site identity."
            )
        ledger = cls(
            path=path,
            site_id=site_id,
            delta=float(data["delta"]),
            epsilon_budget=float(data.get("epsilon_budget", epsilon_budget)),
            history=[(float(s), float(q), int(n)) for s, q, n in data["accountant"]["history"]],
            rounds=list(data.get("rounds", [])),
            refusals=list(data.get("refusals", [])),
            jobs=dict(data.get("jobs", data.get("plans", {}))),
            runs={str(k): str(v) for k, v in data.get("runs", {}).items()},
            budget_changes=list(data.get("budget_changes", [])),
            unit=recorded_unit,
            chain_block=data.get(integrity.BLOCK) if head else None, head=head, pending=pending,  # accepted: new chain
        )
        ledger.budget_changed = ledger._change_budget(epsilon_budget, accept_budget_change)
        return ledger

    def _change_budget(self, new: float, acknowledged: tuple[float, float] | None) -> bool:
        """Apply a new lifetime budget (a raise only when acknowledged); True when it changed."""
        old = self.epsilon_budget
        if abs(new - old) <= 1e-12 * max(1.0, abs(old)):
            return False
        if new > old and not (acknowledged and _close(acknowledged[0], old) and _close(acknowledged[1], new)):
            raise LedgerError(
                f"the lifetime privacy budget of site {self.site_id!r} would be raised from {old:g} to {new:g}. "
                f'Raising it must be deliberate: restart the site with accept-budget-change="{old:g}->{new:g}" in '
                "its node config (simulation: site-accept-budget-change) to acknowledge it; the change is recorded "
                "in the ledger. Lowering a budget needs no acknowledgement."
            )
        spent = self.epsilon()
        how = "accept-budget-change" if new > old else "lowered" if new >= spent else "lowered below spent: exhausted"
        self.budget_changes.append({"time": time.time(), "old": old, "new": new, "by": _who(), "how": how,
                                    "spent": spent})
        if new < spent:
            log.warning("site %s: lifetime budget lowered from %g to %g, below the epsilon %.3f already spent: the "
                        "site is now exhausted and refuses every round", self.site_id, old, new, spent)
        self.epsilon_budget = new
        return True

    @property
    def exhausted(self) -> bool:
        """True when what is spent reaches the lifetime budget (e.g. after lowering it below the spend)."""
        return self.epsilon() >= self.epsilon_budget

    @property
    def needs_save(self) -> bool:
        """True when opening changed what the file should say (a budget change, adoption, an accepted edit)."""
        return self.budget_changed or (bool(self.pending) and self.path.exists())

    @staticmethod
    def recorded(state_dir: Path, accept_edit: str = "") -> dict[str, Any] | None:
        """The ledger file's content, checked (its integrity too), read only (None when the site has never
        trained): for replies that must state the site's spend before any round is planned."""
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return None
        data = _read(path)
        _verified(path, data, accept_edit)
        return data

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "site_id": self.site_id,
            "accountant": {"mechanism": RDPAccountant.mechanism(), "history": [list(h) for h in self.history]},
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "epsilon_spent": self.epsilon(),
            "rounds": self.rounds,
            "refusals": self.refusals,
            "jobs": self.jobs,
            "runs": self.runs,
            "budget_changes": self.budget_changes,
            "unit": self.unit,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, event: str = "update") -> None:
        """Atomically replace the ledger file with the current state, one more link in its integrity chain."""
        key = integrity.ledger_key(self.path.parent, create=True)
        data = {**self.to_json(), **({integrity.BLOCK: self.chain_block} if self.chain_block else {})}
        sealed = integrity.seal(data, key, "; ".join([*self.pending, event]))
        atomic_write_json(self.path, sealed, private=True)  # 0600 in a 0700 state-dir
        self.chain_block, self.pending = sealed[integrity.BLOCK], []
        self.head = integrity.head_of(self.chain_block)

    # -- recording --------------------------------------------------------------------
    def commit_round(self, history: list[tuple[float, float, int]], record: dict[str, Any]) -> None:
        """Record a finished round's steps (the accountant's new history) durably."""
        if len(history) < len(self.history) or [tuple(h) for h in history[: len(self.history) - 1]] != [
            tuple(h) for h in self.history[:-1]
        ]:
            raise LedgerError("the accountant history after training does not extend the ledger's history")
        self.history = [(float(s), float(q), int(n)) for s, q, n in history]
        self.rounds.append({**record, "epsilon_after": self.epsilon(), "time": time.time()})
        self.save("round")

    def record_refusal(self, record: dict[str, Any]) -> None:
        self.refusals.append({**record, "time": time.time()})
        self.save("refusal")


def _verified(path: Path, data: dict[str, Any], accept_edit: str) -> tuple[integrity.Head | None, list[str]]:
    """The chain's head and the events the next write must record (`integrity.check`); LedgerError when it fails."""
    try:
        return integrity.check(path, data, accept_edit, _who())
    except ValueError as err:  # IntegrityError (with the fix), or an unreadable ledger-key
        raise LedgerError(str(err)) from None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _who() -> str:
    """user@host of the process that changed the budget: the site operator's account."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise LedgerError(f"cannot read privacy ledger {path}: {err}") from err
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        history = data["accountant"]["history"]
        for entry in history:
            sigma, rate, steps = entry
            if not (float(sigma) > 0 and 0 < float(rate) <= 1 and int(steps) >= 0):
                raise ValueError(f"implausible accountant entry {entry}")
        float(data["delta"])
        str(data["site_id"])
    except (ValueError, KeyError, TypeError) as err:
        raise LedgerError(
            f"privacy ledger {path} is corrupt ({err}). It is never reset automatically: restore it from "
            "backup, or, if the site's spend is known, have the data protection officer rebuild it."
        ) from err
    return data


@contextlib.contextmanager
def site_lock(state_dir: Path) -> Iterator[None]:
    """Exclusive lock so two processes never train the same site at once."""
    private_dir(state_dir)
    with os.fdopen(open_private(state_dir / ".lock", os.O_WRONLY), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
