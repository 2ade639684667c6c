"""Who may import whom: the rules each package's `__init__` docstring states, checked over the tree with `ast`.

A rule broken by one convenient import is how a room turns back into a grab bag (the audit's code in
the site's training path, torch in the config's validation), so each is written down once here and
checked on every run. Imports under `if TYPE_CHECKING:` never run and do not count.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.helpers.source_tree import REPO, Import, imports, module_name, python_files, relative

HEAVY = ("torch", "torchvision", "opacus", "flwr", "torchstain")
FEDPATH = ("common", "server", "client", "deploy", "simulations")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Rule:
    """Modules under `importers` (except those under `exempt`) import nothing under `forbidden` that is not
    under `allowed`; with `module_level_only`, lazy imports inside functions are allowed."""

    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    module_level_only: bool = False
    exempt: tuple[str, ...] = ()

    def breaks(self) -> list[str]:
        """`file:line -> target` of every import that breaks the rule."""
        found = []
        for path in python_files():
            importer = module_name(path)
            if not _under(importer, self.importers) or _under(importer, self.exempt):
                continue
            for imp in imports(path):
                if (self._counts(imp) and _under(imp.target, self.forbidden)
                        and not _under(imp.target, self.allowed)):
                    found.append(f"{relative(path)}:{imp.line} -> {imp.target}")
        return found

    def _counts(self, imp: Import) -> bool:
        return not imp.type_checking and (imp.module_level or not self.module_level_only)


RULES = {
    # common/__init__: code shared by the server and the sites depends on neither, nor on the tools.
    "common imports no server, client, deploy or simulations": Rule(
        ("common",), ("server", "client", "deploy", "simulations")),
    # common/model/__init__: the model every party builds; training, privacy and the audit build on it.
    "common.model imports nothing of training, privacy or the audit": Rule(
        ("common.model",), ("common.training", "common.privacy", "common.audit")),
    # common/config/__init__: torch-free, and outside itself only the torch-free rules it applies.
    "common.config imports no torch, Opacus or Flower at module level": Rule(
        ("common.config",), HEAVY, module_level_only=True),
    "common.config imports of fedpath only the rules it applies": Rule(
        ("common.config",), FEDPATH,
        allowed=("common.config", "common.privacy.dp_seed", "common.privacy.delta", "common.data.checks")),
    # common/wire/__init__: what crosses the network, defined on its own.
    "common.wire imports nothing of fedpath beyond itself": Rule(("common.wire",), FEDPATH, allowed=("common.wire",)),
    # common/privacy/__init__: accounting and the ledger stand alone; training builds on them.
    "common.privacy imports nothing of training, the model, data, the wire or the audit": Rule(
        ("common.privacy",), ("common.training", "common.model", "common.data", "common.wire", "common.audit")),
    # common/training/__init__: the site's training never reaches the audit, the server or the harness.
    "common.training imports no audit, server or harness": Rule(
        ("common.training",), ("common.audit", "server", "simulations")),
    "the site's training path imports no audit at module level": Rule(
        ("common.training",), ("common.audit",), module_level_only=True),
    # client/__init__ and server/__init__: the two apps meet only on the wire.
    "client imports no server, deploy or simulations": Rule(("client",), ("server", "deploy", "simulations")),
    "server imports no client, deploy or simulations": Rule(("server",), ("client", "deploy", "simulations")),
    # simulations/__init__ and pyproject's wheel: nothing that ships imports the research harness.
    "nothing that ships imports the research harness": Rule(
        FEDPATH, ("simulations.harness",), exempt=("simulations.harness",)),
}


@pytest.mark.parametrize("rule", RULES)
def test_import_rule(rule: str) -> None:
    breaks = RULES[rule].breaks()
    assert breaks == [], f"{rule}: " + "; ".join(breaks)


def test_the_site_imports_no_audit_at_module_level() -> None:
    """common/audit/__init__ and client/__init__: a deployed site never holds canaries."""
    assert Rule(("client",), ("common.audit",), module_level_only=True).breaks() == []


@pytest.mark.slow  # a fresh interpreter imports torch, Opacus and Flower
def test_loading_the_sites_path_loads_no_audit_module() -> None:
    """What a hospital's daemon imports to train (the ClientApp, the round, the training package, the launcher)
    loads no module of `common.audit` and not the harness: checked in a fresh interpreter, not by reading the code."""
    probe = ("import sys; import client.app, client.site, common.training.local, common.training.private, deploy.site.command; "
             "print(','.join(sorted(m for m in sys.modules if m.startswith(('common.audit', 'simulations.harness')))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "", f"the site's path loaded {done.stdout.strip()}"


def test_the_rules_see_imports_at_all() -> None:
    """A rule over imports the scan could not see would pass vacuously: these are known imports of the tree."""
    assert Rule(("server.app",), ("common.wire.instruction",)).breaks() != []  # the server builds the instruction
    assert Rule(("common.audit.canaries",), ("common.training",)).breaks() != []  # a lazy import, inside a function
    assert Rule(("common.audit.canaries",), ("common.training",), module_level_only=True).breaks() == []
    assert Rule(("common.model.inputs",), ("common.privacy",)).breaks() == []  # its privacy import is TYPE_CHECKING
    assert Rule(("simulations",), ("common.audit",), exempt=("simulations.harness",)).breaks() == []
    assert Rule(("simulations",), ("common.audit",)).breaks() != []  # the harness's audit experiment
