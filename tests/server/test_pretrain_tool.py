"""`python -m server.pretrain` on a folder of public data: weights, checksum and honest provenance."""

from __future__ import annotations

import json
from pathlib import Path

from common.model.weights import sha256_of
from server.pretrain import main
from tests.conftest import write_image_tree


def test_pretrain_writes_weights_with_checksum_and_provenance(tmp_path: Path) -> None:
    data = write_image_tree(tmp_path / "public", per_class=6, size=16)
    out = tmp_path / "backbone.pth"
    assert main(["--data", str(data), "--out", str(out), "--image-size", "16", "--epochs", "1",
                 "--batch-size", "8", "--init", "none"]) == 0
    digest = sha256_of(out)
    assert (tmp_path / "backbone.pth.sha256").read_text().split()[0] == digest
    provenance = json.loads((tmp_path / "backbone.pth.json").read_text())
    assert provenance["sha256"] == digest and provenance["images"] == 12
    assert "Not ImageNet weights" in provenance["description"] and str(data) in provenance["data"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_pretrain_names_a_missing_folder(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pth")]) == 2
    assert "error:" in capsys.readouterr().err


def test_pretrain_can_start_a_normalising_federation_from_normalised_colours(tmp_path: Path, capsys) -> None:
    data = write_image_tree(tmp_path / "public", per_class=6, size=16)
    out = tmp_path / "macenko.pth"
    common = ["--data", str(data), "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--init", "none"]
    assert main([*common, "--out", str(out), "--stain-normalize"]) == 0
    provenance = json.loads((tmp_path / "macenko.pth.json").read_text())
    assert "stain-normalised (Macenko, torchstain) to torchstain's reference" in provenance["data"]
    assert main([*common, "--out", str(tmp_path / "bad.pth"), "--stain-normalize", "1,2,3"]) == 2
    assert "stain-reference" in capsys.readouterr().err and not (tmp_path / "bad.pth").exists()
