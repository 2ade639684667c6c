"""A site's privacy budget: accounting (math) apart from the ledger (storage).

* `accounting` — ε of a (σ, q, steps) history (Opacus' RDP accountant), noise calibration for a
  job's grant, whether a round fits, the per-job grant rule. Pure functions, no files.
* `ledger`     — the site's one persistent history: atomic, locked, never reset silently, with
  its jobs, budget changes and unit of privacy.
* `units`      — what a run at one unit of privacy guarantees for the other (patients of a
  patch-level run, patches of a patient-level run).
"""
