"""Pre-flight checks of a site's machine: its data, its state directory and its privacy ledger.

Run by `python -m deploy site` before anything connects, so that a site whose data the
ClientApp would refuse, whose state directory is not writable or whose ledger belongs to
another site stops at start-up with a message naming what to fix, not at its first round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.files import private_dir
from deploy.site.node_config import SiteConfigError

if TYPE_CHECKING:
    from common.data.sources import SiteData


def check_site_files(node_config: Mapping[str, Any], classes: list[str] | None = None) -> list[str]:
    """Data, state directory and ledger checks; returns notes for the operator."""
    data = Path(node_config["data-path"])
    if not data.exists():
        raise SiteConfigError(f"data-path {data} does not exist")
    from common.data.formats import described, file_formats, format_for  # data code stays out of --help

    if data.is_file() and not format_for(data).is_file:
        raise SiteConfigError(f"data-path {data} is a file but not {described(file_formats())}; give "
                              f"{described()}")
    if data.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir()):
        raise SiteConfigError(f"data-path {data} has no class sub-folders; an ImageFolder tree has one folder per class")
    state = Path(node_config["state-dir"])
    state_abs, data_abs = state.resolve(), data.resolve()
    if state_abs == data_abs or state_abs in data_abs.parents or data_abs in state_abs.parents:
        raise SiteConfigError(
            f"state-dir {state} and data-path {data} must be separate, neither inside the other: the site's "
            "ledger and decoded-image cache must not be read as training data, nor patient data backed up with state"
        )
    try:
        private_dir(state)  # 0700: the ledger, the site's log, its split key and decoded images live there
    except OSError as err:
        raise SiteConfigError(f"state-dir {state} cannot be created: {err}") from None
    if not os.access(state, os.W_OK | os.X_OK):
        raise SiteConfigError(f"state-dir {state} is not writable by this user; the privacy ledger lives there")

    notes = _check_ledger(node_config, state)
    notes.append(check_site_data(node_config, classes))
    return notes



def check_site_data(node_config: Mapping[str, Any], classes: list[str] | None = None) -> str:
    """Load `data-path` through the ClientApp's own loader now, not at the first round hours later.

    `client.site.load_site_data` is what the ClientApp calls each round (it reads the site's
    identity, split key and loader settings from the same node config), so whatever it refuses
    (a class folder without images, images without a group in groups.csv, unreadable files under
    strict=true) stops the site here in the loader's own words. `classes` is the federation's
    class list where the operator gives it (`--classes`): only then can an empty folder declare
    a class the site has no images of, as the ClientApp, which knows the list, allows. It
    decodes every image once at the default image-size into the daemon's cache
    (state-dir/cache), which the first run at that size reuses.
    """
    from client.identity import site_identity
    from client.site import load_site_data
    from common.config.run_config import RunConfig
    from common.data.imageset import DataError

    config = RunConfig.from_mapping({})
    previous = os.environ.get("FEDPATH_CACHE_DIR")
    os.environ["FEDPATH_CACHE_DIR"] = previous or str(Path(node_config["state-dir"]) / "cache")  # as the daemon's
    try:
        site = load_site_data(site_identity(node_config, config, run_id=0), config, classes)
    except (DataError, OSError) as err:
        raise SiteConfigError(f"data-path cannot be trained on: {err}") from None
    finally:
        if previous is None:
            os.environ.pop("FEDPATH_CACHE_DIR", None)
    counts = [a + b for a, b in zip(site.train.class_counts(), site.val.class_counts())]
    classes = ", ".join(f"{name} {count}" for name, count in zip(site.train.classes, counts))
    return (f"data: {len(site.train)} training + {len(site.val)} validation images, "
            f"{len(site.train.classes)} classes ({classes})" + data_notes(site))


def data_notes(site: SiteData) -> str:
    """What the loader changed or left out, for the operator: conversions, conflicting copies, test copies."""
    report = site.train.report
    notes = [f"converted {report.converted} images ({report.summary()})"] if report.conversions else []
    if report.conflicting:
        notes.append(f"dropped {report.conflicting} images stored under two classes (named in the log)")
    if site.test_copies:
        notes.append(f"{site.test_copies} images are byte-identical copies of central test images (test-hashes): "
                     "counted, never trained or validated on")
    return "".join(f"; {note}" for note in notes)



def _check_ledger(node_config: Mapping[str, Any], state: Path) -> list[str]:
    """The existing privacy ledger must belong to this site and delta; say what it holds."""
    from client.identity import parse_budget_change
    from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger

    notes = []
    if (state / LEDGER_FILE).exists():
        try:
            ledger = PrivacyLedger.open(
                state, node_config["site-id"], node_config["delta"], node_config["epsilon-budget"],
                unit=None,  # the unit in force is resolved with the data at the first round
                accept_budget_change=parse_budget_change(str(node_config.get("accept-budget-change", ""))),
            )
        except (LedgerError, KeyError, TypeError, ValueError) as err:
            raise SiteConfigError(f"the privacy ledger in state-dir cannot be used: {err}") from None
        if ledger.budget_changed:  # the operator's (acknowledged) change is on record before the site starts
            ledger.save()
        notes.append(
            f"privacy ledger {ledger.path}: epsilon {ledger.epsilon():.3f} of {node_config['epsilon-budget']:g} "
            f"spent in {len(ledger.rounds)} round(s) (delta={ledger.delta:g}, unit of privacy: one {ledger.unit})"
        )
        for change in ledger.budget_changes:
            notes.append(f"lifetime budget changed from {change['old']:g} to {change['new']:g} by {change['by']} "
                         f"({change['how']})")
    else:
        notes.append(f"no privacy ledger yet in {state}: this site has not trained; it starts at epsilon 0")
    return notes
