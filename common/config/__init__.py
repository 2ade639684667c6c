"""The run configuration: every `[tool.flwr.app.config]` key, typed and validated before anything runs.

* `run_config` — `RunConfig` (loading, overrides, a simulated site's δ), `ConfigError`, paths relative to the app;
* `checks`     — the rules, grouped by what they configure (one error names every problem);
* `choices`, `strategies`, `stain_settings`, `booleans` — the names, values and defaults a key may take.

Torch-free on purpose: launchers and a site's pre-flight validate configs without loading torch
(tests/config/test_light_imports.py). Anyone may import it; outside itself it imports only the
torch-free rules it applies: `common.privacy.dp_seed` (the dp-seed rule), `common.privacy.delta` (δ's
default and bound) and `common.data.checks` (the pixel limit).
"""
