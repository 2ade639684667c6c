"""The local launcher (`simulations.run`) and, in `simulations.harness`, the research harness.

The launcher ships in the wheel; the harness stays in the repository (pyproject.toml excludes it),
so nothing outside `simulations.harness` imports it.
"""
