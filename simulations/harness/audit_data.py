"""What an audit federation is made of: its sizes, its sites, and the records the attacks score.

Members are the audited site's training patches; non-members are class-matched patches of
groups no site holds (the central test set); canaries come from one more partition than take
part, so they share no group with any site or non-member. Only the data selection, canaries
and coin flips derive from the experiment seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.audit.canaries import coin_flips, concat, make_canaries, noise_canaries
from common.data.sources import central_test_set, simulated_site
from common.privacy.delta import DEFAULT_DELTA
from common.training.patient_dp import PATCH, PATIENT


@dataclass(frozen=True)
class AuditPlan:
    """Sizes of an audit federation. `per_group` caps the records taken from each group."""

    sites: int = 3  # participating sites; site 0 is audited
    rounds: int = 3
    local_epochs: int = 10
    per_group: int = 3
    site_records: int = 0  # > 0: each site keeps only this many records (whole groups of at most per_group)
    canaries: int = 300
    # "gradient" (simulations.harness.gradient_canaries: Dirac canaries in gradient space), "noise", "blocks"
    # (common.audit.canaries.noise_canaries) or "mislabelled" (real patches)
    canary_kind: str = "gradient"
    # gradient canaries under DP: each one's per-record gradient norm, in multiples of C. Well above 1, so that
    # clipping cuts it to C and clipping that does not clip lets it through whole (simulations.harness.audit_sites);
    # not much more, or an unclipped run diverges (100·C did, in the quick experiment's clipping-off row)
    canary_norm: float = 10.0
    delta: float = DEFAULT_DELTA  # the sites' δ; must be far below 1/m for the canary bound (its δ term is 2·m·δ)
    privacy_unit: str = "auto"  # "patch", "patient", or "auto" = the run config's setting, as a site resolves it
    mia_bootstrap: int = 1000


@dataclass
class AuditData:
    sites: list[Any]  # ImageSet per participating site, site 0 without canaries
    members: Any  # ImageSet: site 0's real training records that the MIA scores (class-matched)
    nonmembers: Any  # ImageSet: held-out records of other groups, class-matched to `members`
    canaries: Any  # ImageSet of all m canaries, with their (wrong) training labels; None for gradient canaries
    included: np.ndarray  # bool per canary
    test: Any  # central test set
    public: Any = None  # gradient canaries: records no site holds, to rank the coordinates they own


def _cap_per_group(data: Any, per_group: int, rng: np.random.Generator, records: int = 0) -> Any:
    """At most `per_group` records of each group (chosen at random), in a stable order; with
    `records` > 0, groups (in random order) only until that many records are kept."""
    keep: list[int] = []
    for group in rng.permutation(np.unique(data.groups)):
        if records and len(keep) >= records:
            break
        idx = np.flatnonzero(data.groups == group)
        keep.extend(rng.choice(idx, size=min(per_group, len(idx)), replace=False).tolist())
    return data.subset(np.sort(np.asarray(keep, dtype=np.int64)))


def _class_matched(a: Any, b: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    """Subsets of a and b with the same number of records of every class."""
    ia, ib = [], []
    for c in range(len(a.classes)):
        xa, xb = np.flatnonzero(a.labels == c), np.flatnonzero(b.labels == c)
        k = min(len(xa), len(xb))
        ia.extend(rng.choice(xa, k, replace=False).tolist())
        ib.extend(rng.choice(xb, k, replace=False).tolist())
    return a.subset(np.sort(np.asarray(ia, dtype=np.int64))), b.subset(np.sort(np.asarray(ib, dtype=np.int64)))


def privacy_unit(config: Any, plan: AuditPlan, data: Any) -> str:
    """The DP unit the audited sites train at: the plan's, or (auto) the run config's as a site
    resolves it: patient where the data names patients, else patch."""
    setting = getattr(config, "privacy_unit", PATCH) if plan.privacy_unit == "auto" else plan.privacy_unit
    if setting == "auto":
        return PATIENT if getattr(data, "patient_groups", False) else PATCH
    return setting


def prepare(config: Any, plan: AuditPlan, seed: int) -> AuditData:
    """Sites, members, non-members and canaries; partition `plan.sites` (one more than take
    part) is the canary source, so canaries share no group with any site or non-member."""
    rng = np.random.default_rng([seed, 12])
    shares = [simulated_site(config, k, plan.sites + 1) for k in range(plan.sites + 1)]
    sites = [_cap_per_group(s.train, plan.per_group, rng, plan.site_records) for s in shares[:plan.sites]]
    test = central_test_set(config)
    members, nonmembers = _class_matched(sites[0], _cap_per_group(test, plan.per_group, rng), rng)
    source = concat([shares[plan.sites].train, shares[plan.sites].val])
    public = None
    if plan.canary_kind == "gradient":
        canaries, public = None, source.subset(np.sort(rng.permutation(len(source))[:256]))
    elif plan.canary_kind in ("noise", "blocks"):
        canaries = noise_canaries(plan.canaries, config.image_size, list(source.classes), rng, source.patient_groups,
                                  block=4 if plan.canary_kind == "blocks" else 1)
    else:
        canaries = make_canaries(source, plan.canaries, rng)
    included = coin_flips(plan.canaries, rng)
    return AuditData(sites, members, nonmembers, canaries, included, test, public)
