"""A site's unit of privacy: the patient where its data names patients, the patch only when the site says so.

Why: a patch-level guarantee gives a patient of k patches only group privacy, roughly (k·ε, k·e^{(k-1)ε}·δ),
meaningless from k = 3 at ε = 8 (docs/PRIVACY.md). A site whose data lost its `groups.csv` used to fall back
to the patch without a word. Now `privacy-unit = auto` (the default) means the patient, and data that names
no patients is refused before anything trains, unless the site's own configuration says
`privacy-unit = patch` (deployed: its node config; simulation: the run config, which stands in for the
experimenter's simulated hospitals and follows the same rule). The launchers check it before starting
(`python -m deploy site`, `python -m simulations.run`); the site's banner and each round's log line state it.
"""

from __future__ import annotations

from common.config.run_config import ConfigError
from common.data.sources import SiteData
from common.training.patient_dp import PATCH, PATIENT


class UnitUndecided(ConfigError):
    """The site's data names no patients and its configuration does not choose the patch: nothing trains."""


def resolve_privacy_unit(setting: str, data: SiteData, deployed: bool = True) -> str:
    """The unit of privacy in force: the site's setting; `auto` = the patient, where the data names patients."""
    named = data.train.patient_groups
    where = "in its node config" if deployed else "in the run config (simulation)"
    if setting == PATCH:
        return PATCH
    if named:
        return PATIENT
    if setting == PATIENT:
        raise ConfigError(
            "privacy-unit=patient needs the site's patient (or slide) of every patch: a groups.csv "
            "('path,group') in the data folder or at groups-csv; without one use privacy-unit=patch"
        )
    raise UnitUndecided(
        "the site's data names no patients (no groups.csv in its data folder, no groups-csv), so privacy-unit=auto "
        "cannot train at the patient level, and fedpath never falls back to the patch by itself: at patch level a "
        "patient with k patches is protected only as a group, which gives no practical protection. Either give the "
        "site the patient (or slide) of every patch in a groups.csv ('path,group') in its data folder or at "
        f'groups-csv, or choose patch-level DP explicitly with privacy-unit="patch" {where}'
    )


def unit_statement(unit: str, setting: str, dp: bool = True) -> str:
    """How the site's logs state its unit: what one DP record is, and why (its setting)."""
    if not dp:
        return "no DP (dp=false): no record is protected"
    why = f"privacy-unit={setting}" + (", the data names patients" if setting == "auto" else "")
    if unit == PATIENT:
        return f"unit of privacy: one patient ({why})"
    return f"unit of privacy: one patch ({why}; a patient with k patches is protected only as a group)"
