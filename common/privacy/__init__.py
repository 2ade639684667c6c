"""A site's privacy budget: accounting (math) apart from the ledger (storage).

* `accounting` — ε of a (σ, q, steps) history (`epsilon_of`: the smaller of Opacus' RDP and PRV
  upper bounds, the one accountant seam), noise calibration for a
  job's grant, whether a round fits, the per-job grant rule. Pure functions, no files.
* `ledger`     — the site's one persistent history: atomic, locked, never reset silently, with
  its jobs, budget changes and unit of privacy.
* `jobs`       — which job a round is charged to: one per run, a named job id only if the ledger
  holds its grant (the coordinator cannot relabel a run into new grants).
* `delta`      — δ's default and the rule δ ≤ 1/(10·n) (torch-free: the config validates with it).
* `period`     — the ε of the rounds in a site's trailing period, against its allowance per period.
* `units`      — what a run at one unit of privacy guarantees for the other (patients of a
  patch-level run, patches of a patient-level run).
* `randomness`, `dp_seed` — the round's secret key and the streams every random draw of training
  comes from; the site's own seed.

Imported by the site, training, the server's tools and the harness. It imports nothing of training,
the model, data, the wire or the audit (outside itself: `common.config`, `common.files`), so
training can build on it without a cycle.
"""
