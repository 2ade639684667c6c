"""Weight sources: good file, missing file, checksum mismatch, wrong architecture, ImageNet."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from common.model.network import build_resnet
from common.model.weights import WeightsError, imagenet_file, resolve_weights, sha256_of
from tests.conftest import randomised_torchvision


def test_local_file_loads_and_is_verified(weights_file: Path) -> None:
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    source, state = resolve_weights(str(weights_file), "resnet18", sha256=digest)
    assert source.kind == "file" and source.sha256 == digest and source.pretrained
    model = build_resnet("resnet18", 3, state, seed=0)
    assert torch.equal(model.layer1[0].bn1.norm.running_var, state["layer1.0.bn1.running_var"])


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet18-pretrained.pth"
    with pytest.raises(WeightsError, match=r"nowhere/resnet18-pretrained\.pth does not exist"):
        resolve_weights(str(missing), "resnet18")


def test_checksum_mismatch_is_refused(weights_file: Path) -> None:
    with pytest.raises(WeightsError, match="refusing to use it"):
        resolve_weights(str(weights_file), "resnet18", sha256="0" * 64)


def test_sidecar_checksum_is_checked(weights_file: Path) -> None:
    sidecar = weights_file.with_name(weights_file.name + ".sha256")
    sidecar.write_text(f"{sha256_of(weights_file)}  {weights_file.name}\n")
    assert resolve_weights(str(weights_file), "resnet18")[0].sha256 == sha256_of(weights_file)
    sidecar.write_text("f" * 64 + "\n")
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve_weights(str(weights_file), "resnet18")


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(randomised_torchvision("resnet50").state_dict(), path)
    _, state = resolve_weights(str(path), "resnet18")
    with pytest.raises(ValueError, match="do not fit a torchvision resnet18"):
        build_resnet("resnet18", 3, state, seed=0)


def test_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        resolve_weights(str(path), "resnet18")


def test_imagenet_missing_offline_says_what_file_and_where() -> None:
    path, prefix, url = imagenet_file("resnet18")
    assert not path.exists()  # TORCH_HOME is a fresh temp dir in tests
    with pytest.raises(WeightsError, match="ImageNet weights for resnet18 are not available") as info:
        resolve_weights("imagenet", "resnet18", download=False)
    message = str(info.value)
    assert path.name in message and prefix in message and str(path.parent) in message and url in message


def test_imagenet_file_with_wrong_hash_is_refused() -> None:
    path, prefix, _ = imagenet_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(randomised_torchvision("resnet18").state_dict(), path)  # self-made, so the hash cannot match
    try:
        with pytest.raises(WeightsError, match=f"must begin with {prefix}"):
            resolve_weights("imagenet", "resnet18", download=False)
    finally:
        path.unlink()


def test_auto_without_imagenet_falls_back_to_scratch_and_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Earlier tests in the session may have called setup_logging(), which stops `fedpath` records
    # from propagating to the root logger that caplog listens on, or changed logger levels.
    monkeypatch.setattr(logging.getLogger("fedpath"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="fedpath.weights")
    source, state = resolve_weights("auto", "resnet18")
    assert state is None and source.kind == "none" and not source.pretrained
    assert "FROM SCRATCH" in caplog.text and "NOT pretrained" in caplog.text


def test_none_is_scratch() -> None:
    source, state = resolve_weights("none", "resnet34")
    assert state is None and "not pretrained" in source.description
