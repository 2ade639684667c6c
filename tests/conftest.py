"""Shared fixtures: tiny configs, self-made weight files, and the real LC25000 data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

REPO = Path(__file__).resolve().parent.parent
LC25000 = REPO.parent / "shared" / "data" / "lc25000-lung"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep decoded-image caches and the torch hub out of the user's home."""
    monkeypatch.setenv("FEDPATH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fedpath-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))


@pytest.fixture
def flower_process() -> Iterator[None]:
    """The identity Flower gives a ServerApp process (messages need a run id)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def lc25000() -> Path:
    if not (LC25000 / "groups.csv").exists():
        pytest.skip(reason=f"real LC25000 data not present at {LC25000} (only in this project's shared/ folder)")
    return LC25000


def randomised_torchvision(arch: str, seed: int = 0) -> nn.Module:
    """A torchvision ResNet with non-trivial BatchNorm statistics, as pretrained ones have."""
    torch.manual_seed(seed)
    net = getattr(models, arch)(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """A self-made (NOT ImageNet) torchvision-format resnet18 state dict."""
    path = tmp_path / "resnet18-selfmade.pth"
    torch.save(randomised_torchvision("resnet18").state_dict(), path)
    return path


def write_image_tree(root: Path, per_class: int, classes: tuple[str, ...] = ("benign", "tumour"),
                     size: int = 32, seed: int = 3) -> Path:
    """A small ImageFolder tree of synthetic H&E-like PNG patches (no groups.csv)."""
    from PIL import Image

    from common.data.synthetic import make_synthetic

    images = make_synthetic(per_class * len(classes), size, seed=seed).images
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(images[c * per_class + i]).save(root / name / f"{i}.png")
    return root


def tiny_run_config(**overrides: object) -> dict[str, object]:
    """Run-config mapping for fast in-process tests (dash-separated keys, as Flower gives)."""
    values: dict[str, object] = {
        "num-server-rounds": 2, "synthetic-images": 240, "image-size": 32, "batch-size": 16,
        "lr": 0.1, "epsilon": 8.0, "delta": 1e-4, "seed": 7, "bootstrap-samples": 50,
        "privacy-unit": "patch",  # tests that plan patch-level steps; the patient unit has its own tests
    }
    values.update(overrides)
    return values


TINY_SIMULATION = (
    "num-server-rounds=2 synthetic-images=600 image-size=32 batch-size=32 lr=0.1 "
    "epsilon=8.0 delta=1e-4 seed=1 bootstrap-samples=100 "
    "audit-canaries=40 "  # site-0 trains with canaries: the report's privacy audit, from a real run
    "strategy='fedadam'"  # the real-run coverage of Flower's FedOpt family (tests/server/test_strategies.py has the rest)
)


@pytest.fixture(scope="session")
def tiny_simulation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `flwr run` simulation (3 sites x 2 rounds, FedAdam), shared by the tests that read its outputs."""
    from simulations.run import run_simulation

    base = tmp_path_factory.mktemp("tiny-simulation")
    os.environ.setdefault("FEDPATH_CACHE_DIR", str(base / "cache"))
    with open(base / "flwr-run.log", "w") as stream:
        return run_simulation(3, [TINY_SIMULATION], base / "runs", base / "flwr-home", stream_to=stream, timeout=540)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # real processes and browsers take minutes: never part of the fast loop (-m "not slow")
        if "integration" in item.keywords or "browser" in item.keywords:
            item.add_marker(pytest.mark.slow)
    if os.environ.get("FEDPATH_SKIP_INTEGRATION") == "1":
        skip = pytest.mark.skip(
            reason="real-process integration test skipped because FEDPATH_SKIP_INTEGRATION=1 is set; unset it to run"
        )
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
