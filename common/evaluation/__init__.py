"""Central evaluation: the metrics the server and the harness compute on a test set.

* `metrics`  — per patch: accuracy, balanced accuracy, macro-F1, one-vs-rest AUC, calibration, bootstrap CIs;
* `patients` — per patient, where the test set names patients: each patient's patch probabilities
  aggregated, patient-level metrics with CIs resampling whole patients.

NumPy only; imported by the server, the harness and the tests, never by the site's training path.
"""
