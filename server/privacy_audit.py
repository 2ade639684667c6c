"""The report's "Privacy audit": what the coordinator can prove about a site from its updates.

Simulation only (`audit-canaries = m`): simulated site 0 trains with the run's canaries
(`common.audit.canaries.run_canaries`), each included with probability ½. The coordinator sees the
global model it sends and the model each site sends back; per round it scores every canary
by how far that site's update moved the model along the canary's own descent direction
(`common.audit.canaries.update_alignment`), summed over rounds: the `gradient` score of the audit
experiment (`simulations.harness.audit`). Those scores are fixed before anyone
looks at the coin flips; only the evaluation (`summarise`) compares them with the flips and
turns the correct guesses into an empirical lower bound on the site's ε (Steinke, Nasr &
Jagielski 2023, `common.audit.bound`), next to the ε the site claims.

Scores are kept in `audit.json` in the run directory after every round, so the report can
be re-made from the run directory alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.audit.bound import INCONCLUSIVE, INCONSISTENT, audit_scores
from common.audit.canaries import AUDITED_SITE, run_canaries, run_coin_flips, update_alignment
from common.audit.mia import mia_metrics
from common.privacy.delta import DEFAULT_DELTA

FALLBACK_DELTA = DEFAULT_DELTA  # the bound's δ for a non-private site (which reports none): the default δ


class RunAudit:
    """Scores the run's canaries against every update the server accepts from the audited site."""

    def __init__(self, model: Any, seed: int, canaries: int, image_size: int, classes: list[str],
                 previous: Mapping[str, Any] | None = None) -> None:
        """`previous`: the audit.json of the run this one resumes (its scores go on accumulating)."""
        self.model = copy.deepcopy(model)
        self.canaries, _ = run_canaries(seed, canaries, image_size, classes)  # the flips stay unused here
        self.scores: dict[str, np.ndarray] = {}
        self.rounds: dict[str, list[int]] = {}
        if previous and int(previous.get("canaries", -1)) == canaries:
            for site, record in previous.get("sites", {}).items():
                self.scores[site] = np.asarray(record["scores"], dtype=np.float64)
                self.rounds[site] = list(record["rounds"])

    def observe(self, server_round: int, site_id: str, sent: Mapping[str, np.ndarray],
                returned: Mapping[str, np.ndarray]) -> None:
        """Add one update: how far it moved the model along each canary's own descent direction."""
        if site_id != AUDITED_SITE:
            return  # no other site holds canaries: scoring its updates would cost time and prove nothing
        score = update_alignment(self.model, self.canaries, sent, returned)
        self.scores[site_id] = self.scores.get(site_id, np.zeros(len(self.canaries))) + score
        self.rounds.setdefault(site_id, []).append(server_round)

    def as_dict(self) -> dict[str, Any]:
        return {"canaries": len(self.canaries), "score": "gradient",
                "sites": {site: {"scores": self.scores[site].tolist(), "rounds": self.rounds[site]}
                          for site in sorted(self.scores)}}


def summarise(audit: Mapping[str, Any], sites: list[dict[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    """The report's `privacy_audit` section: per audited site, claimed ε vs the empirical lower bound."""
    m = int(audit["canaries"])
    included = run_coin_flips(int(config.get("seed", 0)), m)
    by_id = {s["site_id"]: s for s in sites}
    rows = []
    for site_id, record in sorted(audit.get("sites", {}).items()):
        if site_id != AUDITED_SITE:
            continue  # other sites never held the canaries
        site = by_id.get(site_id, {})
        dp = bool(site.get("dp")) and site.get("epsilon") is not None
        delta = float(site.get("delta") or config.get("delta") or FALLBACK_DELTA) if dp else FALLBACK_DELTA
        scores = np.asarray(record["scores"], dtype=np.float64)
        bound = audit_scores(scores, included, delta)
        auc = mia_metrics(scores[included], scores[~included], samples=200, seed=0) if 0 < included.sum() < m else None
        verdict = bound.verdict(float(site["epsilon"])) if dp else None
        rows.append({
            "site_id": site_id, "dp": dp, "claimed_epsilon": site.get("epsilon") if dp else None,
            "delta": delta, "epsilon_lower_bound": bound.epsilon_lower_bound, "ceiling": bound.ceiling,
            "guesses": bound.guesses, "correct": bound.correct, "canaries": m, "included": int(included.sum()),
            "canary_auc": auc["auc"] if auc else None, "canary_auc_ci95": auc["auc_ci95"] if auc else None,
            "rounds": record["rounds"], "verdict": verdict, "consistent": verdict != INCONSISTENT,
        })
    return {"canaries": m, "score": audit.get("score", "gradient"), "confidence": 0.95, "sites": rows,
            "reading": reading(rows)}


def reading(rows: list[dict[str, Any]]) -> str:
    """One plain sentence per audited site on how to read its numbers."""
    parts = []
    for row in rows:
        proven = f"an attacker holding the updates provably learned at least ε = {row['epsilon_lower_bound']:.2f}"
        if row["dp"] and not row["consistent"]:
            parts.append(f"{row['site_id']}: {proven}, MORE than the ε = {row['claimed_epsilon']:.2f} the site claims: "
                         "the DP implementation is broken; do not trust this run's privacy claim.")
        elif row["dp"] and row.get("verdict") == INCONCLUSIVE:
            parts.append(f"{row['site_id']}: {proven}; with {row['canaries']} canaries at δ = {row['delta']:.1e} even "
                         f"every guess right would prove at most ε = {row['ceiling']:.2f}, no more than the "
                         f"ε = {row['claimed_epsilon']:.2f} the site claims, so this audit cannot contradict the "
                         "claim whatever the implementation does: it checks nothing here.")
        elif row["dp"]:
            parts.append(f"{row['site_id']}: {proven}, within the ε = {row['claimed_epsilon']:.2f} the site claims, "
                         f"which the audit could have contradicted (every guess right would prove "
                         f"{row['ceiling']:.2f}); a lower bound can only expose a broken claim, never confirm a "
                         "small ε.")
        else:
            parts.append(f"{row['site_id']} trained without DP: {proven} from {row['canaries']} canaries "
                         "(how much one record can leak here when nothing protects it).")
    return " ".join(parts)


def view(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What report.html prints for the section (formatted), or None when the run had no audit."""
    if not section:
        return None
    rows = []
    for row in section["sites"]:
        ci = row.get("canary_auc_ci95")
        rows.append({
            "site_id": row["site_id"],
            "claimed": f"{row['claimed_epsilon']:.2f}" if row["dp"] else "∞ (no DP)",
            "bound": f"{row['epsilon_lower_bound']:.2f}", "consistent": row["consistent"],
            "ceiling": f"{row['ceiling']:.2f}" if "ceiling" in row else "n/a",
            "verdict": row.get("verdict") or "no DP",
            "guesses": f"{row['correct']} of {row['guesses']} guesses right",
            "auc": "n/a" if row["canary_auc"] is None else f"{row['canary_auc']:.3f}"
                   + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""),
            "canaries": f"{row['included']} of {row['canaries']} included", "delta": f"{row['delta']:.1e}",
            "rounds": ", ".join(str(r) for r in row["rounds"]),
        })
    return {"rows": rows, "reading": section["reading"], "canaries": section["canaries"],
            "broken": [r["site_id"] for r in section["sites"] if not r["consistent"]]}
