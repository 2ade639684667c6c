"""One definition per fact (issue 22): each fact below is written once and used everywhere.

A fact written twice drifts: the server would score the canaries of a site that does not hold them,
a doc would promise a default the code does not have. Where a fact is a literal, these tests read
the tree (`tests.helpers.source_tree`) and name any copy of it outside its one home.
"""

from __future__ import annotations

import ast
import dataclasses
import re

from client.identity import site_identity
from common import paths
from common.audit.canaries import AUDITED_PARTITION, AUDITED_SITE
from common.config.choices import DEFAULT_MAX_PATCHES_PER_PATIENT
from common.config.run_config import RunConfig, load_app_config
from common.config.strategies import STRATEGIES
from common.privacy.delta import DEFAULT_DELTA
from common.training.settings import TrainSettings
from common.wire import instruction
from server.strategy import STRATEGY_CLASSES
from tests.helpers.source_tree import REPO, parsed, python_files, relative, string_constants


def _copies(text: str, home: str) -> list[str]:
    """Where the string literal `text` appears outside the file `home` (file:line)."""
    return [f"{relative(path)}:{line}" for path in python_files() if relative(path) != home
            for line, value in string_constants(path) if value == text]


def test_the_audited_site_is_the_simulated_site_that_trains_with_the_canaries(tmp_path: object) -> None:
    """The server scores the updates of `AUDITED_SITE`; the site of partition `AUDITED_PARTITION` holds the canaries."""
    config = RunConfig(output_dir=str(tmp_path))
    identity = site_identity({"partition-id": AUDITED_PARTITION, "num-partitions": 3}, config, 7)
    assert identity.site_id == AUDITED_SITE
    assert _copies(AUDITED_SITE, "common/paths.py") == []


def _named_literals(fragment: str) -> list[tuple[str, object]]:
    """(file:line, value) of every number literal given to a name, argument, keyword, field or dict key
    containing `fragment` (`delta`, `max_patches`): where a default could be written a second time."""
    found = []
    for path in python_files():
        for node in ast.walk(parsed(path)):
            pairs: list[tuple[str, ast.AST | None]] = []
            if isinstance(node, ast.Assign):
                pairs = [(ast.unparse(t), node.value) for t in node.targets]
            elif isinstance(node, ast.AnnAssign):
                pairs = [(ast.unparse(node.target), node.value)]
            elif isinstance(node, ast.keyword) and node.arg:
                pairs = [(node.arg, node.value)]
            elif isinstance(node, ast.arguments):
                positional = [*node.posonlyargs, *node.args]
                pairs = [(a.arg, d) for a, d in zip(positional[len(positional) - len(node.defaults):], node.defaults)]
                pairs += [(a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults)]
            elif isinstance(node, ast.Dict):
                pairs = [(k.value, v) for k, v in zip(node.keys, node.values)
                         if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            for name, value in pairs:
                if (fragment in name.replace("-", "_").lower() and isinstance(value, ast.Constant)
                        and isinstance(value.value, (int, float)) and not isinstance(value.value, bool)):
                    found.append((f"{relative(path)}:{value.lineno}", value.value))
    return found


def test_the_default_delta_and_patch_cap_are_written_once_in_code() -> None:
    """pyproject.toml, RunConfig and TrainSettings agree, and no module writes 1e-5 or 16 as a δ or a cap."""
    pyproject = load_app_config(REPO / "pyproject.toml")
    assert pyproject.delta == RunConfig().delta == DEFAULT_DELTA
    assert pyproject.max_patches_per_patient == RunConfig().max_patches_per_patient == DEFAULT_MAX_PATCHES_PER_PATIENT
    settings = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    assert settings["max_patches_per_patient"] == DEFAULT_MAX_PATCHES_PER_PATIENT
    # Each literal is found in its home only (which shows that the scan finds such literals at all).
    deltas = [where for where, v in _named_literals("delta") if v == DEFAULT_DELTA]
    caps = [where for where, v in _named_literals("max_patches") if v == DEFAULT_MAX_PATCHES_PER_PATIENT]
    assert [where.split(":")[0] for where in deltas] == ["common/privacy/delta.py"], deltas
    assert [where.split(":")[0] for where in caps] == ["common/config/choices.py"], caps


def test_the_docs_state_the_code_defaults_of_delta_and_the_patch_cap() -> None:
    readme = (REPO / "README.md").read_text()
    privacy = (REPO / "docs" / "PRIVACY.md").read_text()
    delta_row = re.search(r"^\| `epsilon`, `delta` \| ([^|]+) \|", readme, re.M)
    cap_row = re.search(r"^\| `privacy-unit`, `max-patches-per-patient` \| ([^|]+) \|", readme, re.M)
    assert delta_row and float(delta_row.group(1).split(",")[1]) == DEFAULT_DELTA
    assert cap_row and int(cap_row.group(1).split(",")[1]) == DEFAULT_MAX_PATCHES_PER_PATIENT
    stated_delta = re.search(r"default δ = ([0-9.e+-]+)", privacy)
    stated_cap = re.search(r"`max-patches-per-patient` \(default (\d+)\)", privacy)
    assert stated_delta and float(stated_delta.group(1)) == DEFAULT_DELTA
    assert stated_cap and int(stated_cap.group(1)) == DEFAULT_MAX_PATCHES_PER_PATIENT


def test_the_strategy_names_are_written_once_and_the_server_builds_each() -> None:
    """The config's names are the factory's; no module spells a name out again (a typo would pass silently)."""
    assert tuple(STRATEGY_CLASSES) == STRATEGIES
    assert {name: _copies(name, "common/config/strategies.py") for name in STRATEGIES} == {n: [] for n in STRATEGIES}


def test_the_train_instructions_own_keys_are_written_only_in_its_schema() -> None:
    """Both ends name them through `common.wire.instruction` (`proximal-mu` and `bn-statistics` are also
    run-config keys of the same name, so only the instruction's own keys are checked here)."""
    own = (instruction.SERVER_ROUND, instruction.FROZEN_FINGERPRINT, instruction.JOB_ID)
    assert {key: _copies(key, "common/wire/instruction.py") for key in own} == {key: [] for key in own}


def test_the_run_directorys_file_names_are_written_only_in_common_paths() -> None:
    """Writers and readers (server, report, resume, launcher, harness) name a run's files through `common.paths`."""
    names = [paths.RUN_FILE, paths.METRICS_FILE, paths.FINAL_EVAL_FILE, paths.REPORT_FILE, paths.REPORT_HTML_FILE,
             paths.BASELINES_FILE, paths.AUDIT_FILE, paths.BN_STATISTICS_FILE, paths.FINAL_CHECKPOINT,
             paths.ROUND_CHECKPOINTS]  # not CHECKPOINTS_DIR: torch hub's own `checkpoints` folder is another fact
    assert len(set(names)) == len(names)
    assert {name: _copies(name, "common/paths.py") for name in names} == {name: [] for name in names}
