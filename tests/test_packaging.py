"""The wheel ships what a hospital and the coordinating centre run, not the research harness.

The file list is hatchling's own (the build backend pyproject.toml names), computed from the
pyproject config in-process: no build, no network, half a second.
"""

from __future__ import annotations

import pytest

from tests.helpers.source_tree import REPO, python_files, relative

wheel = pytest.importorskip("hatchling.builders.wheel", reason="hatchling (the build backend) is in the [test] extra")


def _wheel_files() -> set[str]:
    return {f.distribution_path for f in wheel.WheelBuilder(str(REPO)).recurse_included_files()}


def test_the_wheel_ships_the_apps_and_launchers_but_not_the_harness() -> None:
    files = _wheel_files()
    shipped = {relative(p) for p in python_files("common", "server", "client", "deploy")}
    assert shipped <= files, sorted(shipped - files)
    assert {"simulations/__init__.py", "simulations/run.py", "simulations/local_superlink.py",
            "simulations/processes.py"} <= files
    assert sorted(f for f in files if f.startswith("simulations/harness/")) == []
    assert {relative(p) for p in python_files("simulations")} - files == {
        relative(p) for p in python_files("simulations") if relative(p).startswith("simulations/harness/")}
