"""Pre-flight checks of a site's machine: its data, classes and unit of privacy, its state directory, its ledger.

Run by `python -m deploy site` before anything connects, so that a site whose data the
ClientApp would refuse, whose state directory is not writable or whose ledger belongs to
another site stops at start-up with a message naming what to fix, not at its first round.
With `write=False` (`--check`, `--check-link`) it changes no ledger: the file stays byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.files import private_dir
from deploy.site.ledger_check import check_ledger
from deploy.site.node_config import SiteConfigError

if TYPE_CHECKING:
    from common.data.sources import SiteData


@dataclass(frozen=True)
class SiteFiles:
    """What the pre-flight found: notes for the operator and the unit of privacy the site will train at."""

    notes: list[str]
    unit: str
    unit_statement: str


def check_site_files(node_config: Mapping[str, Any], classes: list[str] | None = None,
                     write: bool = True) -> SiteFiles:
    """Data, classes, unit of privacy, state directory and ledger; SiteConfigError naming what to fix."""
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

    site = _load_site(node_config, classes)
    notes = [_data_note(site), *_check_classes(site, classes, data)]
    unit, statement = _unit(node_config, site)
    notes += check_ledger(node_config, state, unit, write)
    return SiteFiles(notes, unit, statement)


def _load_site(node_config: Mapping[str, Any], classes: list[str] | None) -> Any:
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
        return load_site_data(site_identity(node_config, config, run_id=0), config, classes)
    except (DataError, OSError) as err:
        raise SiteConfigError(f"data-path cannot be trained on: {err}") from None
    finally:
        if previous is None:
            os.environ.pop("FEDPATH_CACHE_DIR", None)


def _data_note(site: Any) -> str:
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


def _check_classes(site: Any, classes: list[str] | None, data: Path) -> list[str]:
    """The data's classes against the federation's (`--classes`), as the ClientApp checks them every round.

    A data-path one level too high (an export folder whose sub-folders are batches or scanners, each holding
    the class folders) loads as classes named after those sub-folders; it must stop here, not in round 1.
    """
    from common.data.imageset import DataError
    from common.data.sources import check_classes

    found = list(site.train.classes)
    if not classes:
        return [f"no --classes: the class folders ({', '.join(found)}) are checked against the federation's class "
                "list only at the first round; give --classes A,B,... to check them now"]
    try:
        check_classes(found, classes, f"data-path {data}")
    except DataError as err:
        raise SiteConfigError(f"{err}. {_class_fix(data, classes)}") from None
    return []


def _class_fix(data: Path, classes: list[str]) -> str:
    if data.is_dir():
        for sub in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
            inside = {p.name for p in sub.iterdir() if p.is_dir()}
            if inside & set(classes):
                return (f"data-path looks one level too high: {sub} holds class folders "
                        f"({', '.join(sorted(inside & set(classes)))}); point data-path at {sub} (one export "
                        "folder per site and node config)")
    return ("Rename the class folders to the federation's class names, or ask the coordinator for the class list "
            "(an empty folder named after a class declares a class this site has no images of)")


def _unit(node_config: Mapping[str, Any], site: Any) -> tuple[str, str]:
    """The unit of privacy the ClientApp will train at, decided now from the same data and node config."""
    from client.privacy_unit import resolve_privacy_unit, unit_statement
    from common.config.run_config import ConfigError

    setting = str(node_config.get("privacy-unit", "auto"))
    try:
        unit = resolve_privacy_unit(setting, site, deployed=True)
    except ConfigError as err:
        raise SiteConfigError(str(err)) from None
    return unit, unit_statement(unit, setting)
