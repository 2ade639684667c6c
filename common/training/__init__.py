"""A site's local training: DP-SGD (or not) on its records, every random draw from its secret key.

* `local`      — `train_local` (the entry point: non-private, or DP at either unit) and `predict`;
* `private`    — DP-SGD over records (patients, or patches as patients of one patch);
* `loop`       — what every path shares: optimizer, the loop over steps, non-finite logits masked,
  the per-record injection point (simulation only), clean-up;
* `settings`   — what a training call is told (`TrainSettings`) and reports (`TrainOutcome`);
* `steps`      — the steps, sampling rate and Opacus mode a round plans with;
* `dp_engine`  — what fedpath adds to Opacus: the site's accountant, CSPRNG noise, finite records;
* `proximal`   — FedProx's term, after clipping and noise;
* `patient_dp` — per-record (patient-level) sampling and clipping with Opacus' classes.

Imported by the site (`client/`), the server's tools and the harness. It never imports
`common.audit`, the server or the harness: the audit reaches training only through the injection
point the harness supplies (tests/training/test_no_audit_in_site_path.py).
"""
