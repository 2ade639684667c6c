"""A ledger that shows tampering and resets (issue 24): the integrity chain, budget cuts, new ledgers at ε 0.

Each attack is what an operator or another account with write access to the ledger file tried: a hand edit
(epsilon_budget 12 -> 100), a removed round, a stripped chain, a deleted key, another site's ledger copied in,
a deleted ledger. What the chain cannot detect is tested too, so docs/PRIVACY.md's list of it stays true.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import pytest

from common.paths import SITE_LOG
from common.privacy import integrity
from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from common.privacy.new_ledger import ack_problem, new_ledger_problem

TODAY = dt.date(2026, 12, 5)


def _trained_ledger(state: Path, budget: float = 12.0) -> PrivacyLedger:
    """A site's ledger after two rounds, written as the site writes it."""
    ledger = PrivacyLedger.open(state, "site-a", 1e-5, budget)
    ledger.commit_round([(1.0, 0.1, 20)], {"round": 1})
    ledger.commit_round([(1.0, 0.1, 40)], {"round": 2})
    return ledger


def _edit(state: Path, change) -> None:
    data = json.loads((state / LEDGER_FILE).read_text())
    change(data)
    (state / LEDGER_FILE).write_text(json.dumps(data, indent=1))


def test_a_ledger_written_by_the_site_verifies_and_each_write_adds_a_link(tmp_path: Path) -> None:
    ledger = _trained_ledger(tmp_path)
    again = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)
    assert again.head == ledger.head and again.head.seq == 1  # two writes: "created ...; round", "round"
    assert again.head.began.startswith("created by ") and again.epsilon() == pytest.approx(ledger.epsilon())
    key = tmp_path / integrity.KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_text().strip() not in (tmp_path / LEDGER_FILE).read_text()
    assert PrivacyLedger.recorded(tmp_path)["epsilon_spent"] == pytest.approx(ledger.epsilon())


def test_a_hand_edited_budget_is_refused_naming_the_change_and_the_fix(tmp_path: Path) -> None:
    _trained_ledger(tmp_path)
    _edit(tmp_path, lambda d: d.update(epsilon_budget=100.0))  # the edit: 12 -> 100
    for read in (lambda: PrivacyLedger.open(tmp_path, "site-a", 1e-5, 100.0), lambda: PrivacyLedger.recorded(tmp_path)):
        with pytest.raises(LedgerError, match=r"failed its integrity check: .*epsilon_budget is 100.0 in the file "
                                              r"but was 12.0.*Restore privacy-ledger.json and ledger-key together"):
            read()
    with pytest.raises(LedgerError, match=r'accept-budget-change="OLD->NEW"\), never in the file'):
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)


@pytest.mark.parametrize("edit", [
    lambda d: d["rounds"].pop(),  # a round deleted
    lambda d: d["accountant"]["history"].__setitem__(-1, [1.0, 0.1, 1]),  # steps lowered: ε understated
    lambda d: d.update(epsilon_spent=0.1),
    lambda d: d["integrity"]["chain"].pop(),  # the last link removed to match an older content
    lambda d: d.pop("integrity"),  # the chain stripped, as if the ledger were from before it
])
def test_every_edit_of_content_or_chain_is_refused(tmp_path: Path, edit) -> None:
    _trained_ledger(tmp_path)
    _edit(tmp_path, edit)
    with pytest.raises(LedgerError, match="failed its integrity check"):
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)


def test_another_sites_ledger_copied_in_or_a_missing_key_is_refused(tmp_path: Path) -> None:
    _trained_ledger(tmp_path / "a")
    _trained_ledger(tmp_path / "b")
    shutil.copy(tmp_path / "b" / LEDGER_FILE, tmp_path / "a" / LEDGER_FILE)  # a valid ledger, under another key
    with pytest.raises(LedgerError, match="does not verify from link 0"):
        PrivacyLedger.open(tmp_path / "a", "site-a", 1e-5, 12.0)
    (tmp_path / "b" / integrity.KEY_FILE).unlink()
    with pytest.raises(LedgerError, match="ledger-key is missing"):
        PrivacyLedger.open(tmp_path / "b", "site-a", 1e-5, 12.0)


def test_an_edit_the_operator_accepts_by_its_digest_is_resealed_and_recorded(tmp_path: Path) -> None:
    _trained_ledger(tmp_path)
    _edit(tmp_path, lambda d: d.update(epsilon_budget=10.0))
    with pytest.raises(LedgerError, match=r'accept-ledger-edit="([0-9a-f]{16})"') as refused:
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 10.0)
    digest = str(refused.value).split('accept-ledger-edit="')[1][:16]
    with pytest.raises(LedgerError, match="failed its integrity check"):  # another digest accepts nothing
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 10.0, accept_edit="0" * 16)
    assert PrivacyLedger.recorded(tmp_path, accept_edit=digest)["epsilon_budget"] == 10.0  # what a round reads first
    accepted = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 10.0, accept_edit=digest)
    assert accepted.needs_save and accepted.epsilon_budget == 10.0
    accepted.save("opened by the site")
    head = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 10.0).head  # verifies again, without the acknowledgement
    assert head.seq == 0 and head.began.startswith("edit accepted by ") and "epsilon_budget is 10.0" in head.began


def test_a_ledger_from_before_the_chain_is_adopted_once_with_a_notice(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    _trained_ledger(tmp_path)
    _edit(tmp_path, lambda d: d.pop("integrity"))
    (tmp_path / integrity.KEY_FILE).unlink()  # as an old fedpath left it: no chain, no key
    before = (tmp_path / LEDGER_FILE).read_bytes()
    with caplog.at_level(logging.WARNING, logger="fedpath.site"):
        legacy = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)
    assert "has no integrity chain" in caplog.text and "an edit made before then cannot be detected" in caplog.text
    assert legacy.needs_save and (tmp_path / LEDGER_FILE).read_bytes() == before  # opening writes nothing
    legacy.save("opened by the site")
    adopted = PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)
    assert adopted.head.began.startswith("adopted by ") and not adopted.needs_save
    _edit(tmp_path, lambda d: d.pop("integrity"))  # stripping the chain again no longer passes as "old"
    with pytest.raises(LedgerError, match="the chain was removed"):
        PrivacyLedger.open(tmp_path, "site-a", 1e-5, 12.0)


def test_what_the_chain_does_not_detect_a_rollback_of_ledger_and_key_together(tmp_path: Path) -> None:
    """docs/PRIVACY.md says so: an older (ledger, key) pair is valid; the site's log of heads shows it."""
    ledger = _trained_ledger(tmp_path / "site")
    shutil.copytree(tmp_path / "site", tmp_path / "backup")
    ledger.commit_round([(1.0, 0.1, 60)], {"round": 3})
    for name in (LEDGER_FILE, integrity.KEY_FILE):
        shutil.copy(tmp_path / "backup" / name, tmp_path / "site" / name)
    rolled_back = PrivacyLedger.open(tmp_path / "site", "site-a", 1e-5, 12.0)
    assert rolled_back.head.seq == 1 < ledger.head.seq and rolled_back.total_steps() == 40  # under-counts


def test_lowering_the_budget_below_what_is_spent_says_the_site_is_exhausted(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    spent = _trained_ledger(tmp_path).epsilon()
    assert 0 < spent < 12
    with caplog.at_level(logging.WARNING, logger="fedpath.site"):
        cut = PrivacyLedger.open(tmp_path, "site-a", 1e-5, spent / 2)
    assert cut.exhausted and f"below the epsilon {spent:.3f} already spent: the site is now exhausted" in caplog.text
    cut.save("opened by the site")
    [change] = PrivacyLedger.open(tmp_path, "site-a", 1e-5, spent / 2).budget_changes
    assert change["how"] == "lowered below spent: exhausted" and change["spent"] == pytest.approx(spent)
    assert not PrivacyLedger.open(tmp_path / "other", "site-a", 1e-5, 12.0).exhausted


# -- a new ledger at ε 0 -------------------------------------------------------------------------------------


def test_a_deployed_site_without_a_ledger_needs_todays_acknowledgement(tmp_path: Path) -> None:
    problem = new_ledger_problem(tmp_path, "site-a", deployed=True, ack="", today=TODAY)
    assert "would start at epsilon 0" in problem and 'accept-new-ledger="2026-12-05"' in problem
    assert "a fresh or wiped state-dir looks the same" in problem
    assert new_ledger_problem(tmp_path, "site-a", deployed=True, ack="2026-12-05", today=TODAY) == ""
    assert new_ledger_problem(tmp_path, "site-a", deployed=True, ack="2026-12-04", today=TODAY) == ""  # midnight
    assert "from an earlier day" in ack_problem("2026-12-01", TODAY)  # a line left in the config: not a reset
    assert "in the future" in ack_problem("2026-12-06", TODAY) and "not a date" in ack_problem("yes", TODAY)


def test_a_lost_ledger_is_named_by_what_the_state_dir_still_holds(tmp_path: Path) -> None:
    _trained_ledger(tmp_path)
    (tmp_path / SITE_LOG).write_text(json.dumps({"status": "trained", "metrics": {"dp": 1}}) + "\n")
    (tmp_path / LEDGER_FILE).unlink()
    problem = new_ledger_problem(tmp_path, "site-a", deployed=True, ack="", today=TODAY)
    assert "has been used before" in problem and "integrity key" in problem and "1 round(s) trained" in problem
    assert "restore privacy-ledger.json and ledger-key together from backup" in problem
    # a simulated site (the experimenter's) starts afresh only in a directory without such signs
    assert "delete" in new_ledger_problem(tmp_path, "site-0", deployed=False, ack="", today=TODAY)
    assert new_ledger_problem(tmp_path / "fresh", "site-0", deployed=False, ack="", today=TODAY) == ""
