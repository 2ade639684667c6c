"""Code shared by the fedpath server and sites, one package per role: `config`, `model`, `data`,
`training`, `privacy`, `wire`, `audit`; and a few modules of one definition each (`files`, `paths`,
`metrics`, `progress`, `logging_setup`, `versions`).

Nothing in common/ imports `server`, `client`, `deploy` or `simulations`; what each package may
import is in its own docstring (all checked by tests/test_import_rules.py; docs/ARCHITECTURE.md
draws them).
"""

__version__ = "0.1.0"
