"""A site's privacy ledger: the one Opacus accountant history that every round adds to.

Why a ledger and not a fresh `PrivacyEngine` per round: epsilon composes over everything
a site has ever released, across rounds, runs and restarts. Flower's Opacus example
reports the epsilon of one round; we keep the accountant's `state_dict` on the site's disk
and reload it before every round, so the epsilon reported is the cumulative spend.

Durability: the file is replaced atomically (temp file, fsync, rename, fsync of the
directory) under an exclusive lock, and a round's spend is committed before its update
leaves the site, so a crash can over-count but never under-count. A file that cannot be
parsed stops the site with an error: resetting it silently would forget real spending.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opacus.accountants import RDPAccountant

FORMAT = "fedpath-privacy-ledger/1"
LEDGER_FILE = "privacy-ledger.json"


class LedgerError(RuntimeError):
    """The ledger is unreadable or inconsistent; never resolved by resetting it."""


@dataclass
class PrivacyLedger:
    """Cumulative (epsilon, delta) spend of one site, backed by a JSON file."""

    path: Path
    site_id: str
    delta: float
    epsilon_budget: float
    history: list[tuple[float, float, int]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- accounting -------------------------------------------------------------------
    def accountant(self) -> RDPAccountant:
        """A fresh Opacus RDP accountant holding this site's whole history."""
        acc = RDPAccountant()
        acc.load_state_dict({"history": [tuple(h) for h in self.history], "mechanism": acc.mechanism()})
        return acc

    def epsilon(self) -> float:
        return epsilon_of(self.history, self.delta)

    def total_steps(self) -> int:
        return int(sum(h[2] for h in self.history))

    # -- persistence ------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path, site_id: str, delta: float, epsilon_budget: float) -> PrivacyLedger:
        """Load the site's ledger, or start an empty one if the site has never trained."""
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return cls(path, site_id, delta, epsilon_budget)
        data = _read(path)
        if data.get("site_id") != site_id:
            raise LedgerError(
                f"{path} belongs to site {data.get('site_id')!r}, not {site_id!r}; each site needs its own state-dir"
            )
        if abs(float(data["delta"]) - delta) > 1e-15:
            raise LedgerError(
                f"{path} was accounted with delta={data['delta']}, but delta={delta} was asked for; "
                "changing delta mid-life would misstate the guarantee. Keep delta, or start a new site identity."
            )
        return cls(
            path=path,
            site_id=site_id,
            delta=float(data["delta"]),
            epsilon_budget=epsilon_budget,
            history=[(float(s), float(q), int(n)) for s, q, n in data["accountant"]["history"]],
            rounds=list(data.get("rounds", [])),
            refusals=list(data.get("refusals", [])),
            plans=dict(data.get("plans", {})),
        )

    @staticmethod
    def spent_so_far(state_dir: Path) -> float:
        """The epsilon a site's ledger records (0.0 when it has never trained), without opening it
        for writing: for replies that must state the site's spend before any round is planned."""
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return 0.0
        data = _read(path)
        return epsilon_of([(float(s), float(q), int(n)) for s, q, n in data["accountant"]["history"]],
                          float(data["delta"]))

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
            "plans": self.plans,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self) -> None:
        """Atomically replace the ledger file with the current state."""
        atomic_write_json(self.path, self.to_json())

    # -- recording --------------------------------------------------------------------
    def commit_round(self, history: list[tuple[float, float, int]], record: dict[str, Any]) -> None:
        """Record a finished round's steps (the accountant's new history) durably."""
        if len(history) < len(self.history) or [tuple(h) for h in history[: len(self.history) - 1]] != [
            tuple(h) for h in self.history[:-1]
        ]:
            raise LedgerError("the accountant history after training does not extend the ledger's history")
        self.history = [(float(s), float(q), int(n)) for s, q, n in history]
        self.rounds.append({**record, "epsilon_after": self.epsilon(), "time": time.time()})
        self.save()

    def record_refusal(self, record: dict[str, Any]) -> None:
        self.refusals.append({**record, "time": time.time()})
        self.save()


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of an accountant history at `delta` (0 for an empty history)."""
    if not history:
        return 0.0
    acc = RDPAccountant()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))


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


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def site_lock(state_dir: Path) -> Iterator[None]:
    """Exclusive lock so two processes never train the same site at once."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
