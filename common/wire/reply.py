"""The site -> server reply: every value a site sends, its type, and how it is protected.

This is the one definition of the reply. The site builds it (`encode`), the server reads it
(`decode`, which refuses anything undeclared), the report's "what each site sent" section and
docs/PRIVACY.md's table are generated from / tested against `FIELDS`. A value may cross the
wire only if it is

* ``dp``: computed from the training data only through DP-SGD, its cost in the site's ledger;
* ``accounting``: a function of the site's privacy accounting (σ, q, steps, δ and the history
  of these), which depends on the training data only through n, the number of training
  records, which fedpath treats as public (see docs/PRIVACY.md, "What is treated as public");
* ``configured``: set by the site's operator (node config) or the run config;
* ``participation``: whether, and how, the site answered (fixed codes, never free text);
* ``opt-in``: a local diagnostic, sent only when the site's operator opts in
  (`share-diagnostics=true` in the node config; simulation: the run config stands in).

Free text never crosses the wire: refusals and failures are fixed codes with fixed sentences
(`REFUSALS`, `FAILURES`); the full text stays in the site's own log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DP, ACCOUNTING, CONFIGURED, PARTICIPATION, OPT_IN = "dp", "accounting", "configured", "participation", "opt-in"
PROTECTIONS = {
    DP: "differentially private: computed from the training data only through DP-SGD, charged to the site's ledger",
    ACCOUNTING: "privacy accounting: depends on the data only through the number of training records n, "
                "which is treated as public",
    CONFIGURED: "configured: set by the site's operator or the run config, not computed from data",
    PARTICIPATION: "participation: whether and how the site answered, as a fixed code (never free text)",
    OPT_IN: "opt-in diagnostic: NOT differentially private; sent only when the site's operator opts in",
}

# Where a value travels in Flower's RecordDict.
ARRAYS, METRICS, SITE, DIAGNOSTICS = "arrays", "metrics", "site", "diagnostics"


@dataclass(frozen=True)
class ReplyField:
    key: str
    record: str  # arrays | metrics | site | diagnostics
    kind: type
    protection: str
    meaning: str


FIELDS: tuple[ReplyField, ...] = (
    ReplyField("arrays", ARRAYS, dict, DP, "the trainable weights after this round's local DP-SGD"),
    ReplyField("site-id", SITE, str, CONFIGURED, "the site's name from its node config"),
    ReplyField("status", SITE, str, PARTICIPATION, "trained or refused"),
    ReplyField("refusal", SITE, str, PARTICIPATION, "why a round was refused, as one of fixed codes ('' when trained)"),
    ReplyField("randomness", SITE, str, CONFIGURED,
               "where the site's DP noise came from: 'secure' (OS CSPRNG) or 'site-seed' (reproducible)"),
    ReplyField("privacy-unit", SITE, str, CONFIGURED, "what one DP record is: 'patient' or 'patch'"),
    ReplyField("overridden", SITE, str, CONFIGURED,
               "the run-config keys this site did not apply because its own settings win, comma-separated from a "
               "fixed list ('' when none; a simulated site applies the run config)"),
    ReplyField("num-examples", METRICS, int, ACCOUNTING,
               "n, the number of training records; FedAvg weighs by it (0 when refused)"),
    ReplyField("epsilon", METRICS, float, ACCOUNTING, "the site's cumulative ε over everything it ever released"),
    ReplyField("epsilon-budget", METRICS, float, CONFIGURED, "the site's lifetime ε budget"),
    ReplyField("epsilon-asked", METRICS, float, CONFIGURED, "the ε this job asked each site for"),
    ReplyField("epsilon-granted", METRICS, float, ACCOUNTING,
               "the ε the site granted the job this run is charged to (the run itself, or a job in the site's "
               "ledger it resumes): min(asked, its per-job cap, what remains)"),
    ReplyField("epsilon-per-period", METRICS, float, CONFIGURED,
               "the site's allowance: the most ε its rounds of any trailing period may compose to (0 = none)"),
    ReplyField("period-days", METRICS, float, CONFIGURED, "the length of that period in days"),
    ReplyField("epsilon-in-period", METRICS, float, ACCOUNTING,
               "ε of the composition of the site's rounds in its trailing period, after this round (0 when it "
               "sets no allowance)"),
    ReplyField("delta", METRICS, float, ACCOUNTING, "the site's δ"),
    ReplyField("noise-multiplier", METRICS, float, ACCOUNTING, "σ of this round"),
    ReplyField("max-grad-norm", METRICS, float, CONFIGURED, "C, the clipping norm"),
    ReplyField("privacy-records", METRICS, int, ACCOUNTING,
               "records in the unit of privacy (patients or patches), from which q derives; treated as public like n"),
    ReplyField("sample-rate", METRICS, float, ACCOUNTING, "q, the Poisson sampling rate of records (patients or patches)"),
    ReplyField("steps", METRICS, int, ACCOUNTING, "DP-SGD steps taken this round"),
    ReplyField("dp", METRICS, int, CONFIGURED, "1 when the round ran under DP"),
    ReplyField("shares-diagnostics", METRICS, int, CONFIGURED, "1 when the site's operator opted in to diagnostics"),
    ReplyField("train-loss", DIAGNOSTICS, float, OPT_IN, "mean training loss of the round"),
    ReplyField("val-accuracy", DIAGNOSTICS, float, OPT_IN, "accuracy on the site's local validation split"),
    ReplyField("val-examples", DIAGNOSTICS, int, OPT_IN, "size of the local validation split"),
    ReplyField("class-counts", DIAGNOSTICS, list, OPT_IN, "training records per class"),
    ReplyField("skipped-files", DIAGNOSTICS, int, OPT_IN, "unreadable files skipped at the site"),
    ReplyField("train-seconds", DIAGNOSTICS, float, OPT_IN, "wall time of the round at the site"),
)
FIELD_BY_KEY = {f.key: f for f in FIELDS}

# Fixed refusal codes and the only sentences about them that leave the site.
REFUSALS: dict[str, str] = {
    "too-few-examples": "the site has fewer training records than min-site-examples",
    "non-private-not-allowed": "the run asks for dp=false, which this site's operator does not allow",
    "budget-exhausted": "the site's privacy budget leaves no room for this job (lifetime budget or per-job grant used up)",
    "round-exceeds-budget": "this round would take the site beyond the site's budget (its grant for this job "
                            "or its lifetime budget)",
    "audit-canaries-not-allowed": "the run asks for audit canaries (audit-canaries > 0), which only simulated "
                                  "sites train with",
    "invalid-proximal-mu": "the server's proximal-mu (FedProx) is not a finite number >= 0",
    "period-allowance-exceeded": "this round would take the ε of the site's rounds in its trailing period beyond "
                                 "its allowance per period (epsilon-per-period)",
}
# The run-config keys a deployed site takes from its own node config instead (client.overrides): the only words
# `overridden` may hold.
OVERRIDABLE: tuple[str, ...] = (
    "delta", "privacy-unit", "val-fraction", "strict", "ledger-dir", "site-epsilon-budget", "site-epsilon-per-job",
    "site-epsilon-per-period", "site-period-days", "site-accept-budget-change", "site-share-diagnostics",
    "site-dp-seed",
)
# Fixed failure codes: an exception at a site crosses the wire only as one of these.
FAILURES: dict[str, str] = {
    "data": "the site could not load or check its data",
    "config": "the site's configuration (node config or run config) is invalid for this site",
    "model": "the site's model does not match the server's (weights, arch, policy or classes)",
    "ledger": "the site's privacy ledger refused the round (unreadable, failed its integrity check, missing, other "
              "site, or changed δ/unit/budget)",
    "privacy-unit": "the site's data names no patients and its operator has not chosen patch-level DP "
                    "(privacy-unit=patch), so it trains at neither unit",
    "server-input": "the server sent an instruction with undeclared or missing keys, or non-finite or out-of-range "
                    "weights, statistics or numbers; refused before any data was read",
    "internal": "an unexpected error at the site",
}
FAILURE_PREFIX = "fedpath site failure"


class ReplyError(ValueError):
    """A reply does not follow the schema (unknown key, wrong type, unknown code)."""


@dataclass
class SiteReplyContent:
    """What one site sends in one round, typed. `diagnostics` is None unless opted in."""

    site_id: str
    status: str
    refusal: str
    randomness: str
    privacy_unit: str
    metrics: dict[str, float]
    diagnostics: dict[str, Any] | None = None
    update: dict[str, Any] | None = field(default=None, repr=False)
    overridden: str = ""  # comma-separated keys of OVERRIDABLE (client.overrides)

    @property
    def reason(self) -> str:
        return REFUSALS.get(self.refusal, "")

    @property
    def overridden_keys(self) -> list[str]:
        return [k for k in self.overridden.split(",") if k]


def _fields(record: str) -> list[ReplyField]:
    return [f for f in FIELDS if f.record == record]


def _typed(f: ReplyField, value: Any) -> Any:
    if f.kind is list:
        if not isinstance(value, (list, tuple)):
            raise ReplyError(f"{f.key} must be a list, got {type(value).__name__}")
        return [int(v) for v in value]
    if f.kind is str:
        if not isinstance(value, str):
            raise ReplyError(f"{f.key} must be text, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyError(f"{f.key} must be a number, got {value!r}")
    return int(value) if f.kind is int and math.isfinite(value) else float(value)


def encode(reply: SiteReplyContent) -> dict[str, dict[str, Any]]:
    """Records to send: {"metrics": {...}, "site": {...}, "diagnostics": {...}?}; arrays separately."""
    site = {"site-id": reply.site_id, "status": reply.status, "refusal": reply.refusal,
            "randomness": reply.randomness, "privacy-unit": reply.privacy_unit, "overridden": reply.overridden}
    metrics = {f.key: _typed(f, reply.metrics[f.key]) for f in _fields(METRICS)}
    out: dict[str, dict[str, Any]] = {METRICS: metrics, SITE: site}
    if reply.diagnostics is not None:
        out[DIAGNOSTICS] = {f.key: _typed(f, reply.diagnostics[f.key]) for f in _fields(DIAGNOSTICS)}
    _check(out)
    return out


def _check(records: Mapping[str, Mapping[str, Any]]) -> None:
    for name, values in records.items():
        if name not in (METRICS, SITE, DIAGNOSTICS):
            raise ReplyError(f"undeclared record {name!r} in a site reply")
        declared = {f.key for f in _fields(name)}
        undeclared = sorted(set(values) - declared)
        if undeclared:
            raise ReplyError(f"undeclared keys {undeclared} in the {name!r} record of a site reply")
        missing = sorted(declared - set(values))
        if missing:
            raise ReplyError(f"keys {missing} missing from the {name!r} record of a site reply")
        for key, value in values.items():
            _typed(FIELD_BY_KEY[key], value)
    site = records.get(SITE, {})
    if site.get("status") not in ("trained", "refused"):
        raise ReplyError(f"status must be trained or refused, got {site.get('status')!r}")
    if site.get("refusal") and site["refusal"] not in REFUSALS:
        raise ReplyError(f"unknown refusal code {site['refusal']!r}")
    unknown = [k for k in str(site.get("overridden", "")).split(",") if k and k not in OVERRIDABLE]
    if unknown:
        raise ReplyError(f"overridden names keys {unknown} outside the fixed list of overridable run-config keys")


def decode(records: Mapping[str, Mapping[str, Any]], update: dict[str, Any] | None) -> SiteReplyContent:
    """A received reply, validated against the schema (raises ReplyError on anything undeclared)."""
    _check(records)
    site = records[SITE]
    return SiteReplyContent(
        site_id=str(site["site-id"]), status=str(site["status"]), refusal=str(site["refusal"]),
        randomness=str(site["randomness"]), privacy_unit=str(site["privacy-unit"]), overridden=str(site["overridden"]),
        metrics={k: _typed(FIELD_BY_KEY[k], v) for k, v in records[METRICS].items()},
        diagnostics=dict(records[DIAGNOSTICS]) if DIAGNOSTICS in records else None,
        update=update,
    )


def failure_text(code: str) -> str:
    """The only text about a site's exception that leaves the site."""
    return f"{FAILURE_PREFIX} [{code}]: {FAILURES.get(code, FAILURES['internal'])} (details in the site's own log)"


def largest_site_epsilon(entries: Iterable[Mapping[str, Any]]) -> float | None:
    """The largest cumulative ε among sites that trained under DP; None when no DP site reported one.

    The one number a federation's privacy is summarised by, defined once: Flower's round log
    (`largest-site-epsilon`) and the report's round table and baseline comparison call this,
    and the experiments' `max_site_epsilon` is the same number. `entries` carry `dp` and `epsilon` as a
    reply's metrics do: replies' metrics, or the report's per-site summaries. A site without
    DP has no ε that means anything, so it never counts.
    """
    spent = [float(e["epsilon"]) for e in entries if e.get("dp") and _finite_number(e.get("epsilon"))]
    return max(spent) if spent else None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def wire_table() -> list[dict[str, str]]:
    """Rows for docs/PRIVACY.md and the report: what crosses the wire, and how it is protected."""
    return [{"key": f.key, "record": f.record, "protection": f.protection, "meaning": f.meaning} for f in FIELDS]


WIRE_TABLE_BEGIN = "<!-- wire-table: generated from common/wire/reply.py by `python -m common.wire.reply`; a test keeps it equal -->"
WIRE_TABLE_END = "<!-- end wire-table -->"


def wire_markdown() -> str:
    """docs/PRIVACY.md's table "what crosses the wire, and how it is protected"."""
    rows = ["| value | travels in | protection | meaning |", "|---|---|---|---|"]
    rows += [f"| `{f.key}` | {f.record} | **{f.protection}** | {f.meaning} |" for f in FIELDS]
    refusals = "; ".join(f"`{code}`" for code in REFUSALS)
    failures = "; ".join(f"`{code}`" for code in FAILURES)
    rows += ["", f"Refusal codes: {refusals}. Failure codes: {failures}. Protection classes: "
             + "; ".join(f"**{k}**: {v}" for k, v in PROTECTIONS.items()) + "."]
    return "\n".join([WIRE_TABLE_BEGIN, *rows, WIRE_TABLE_END])


if __name__ == "__main__":
    print(wire_markdown())
