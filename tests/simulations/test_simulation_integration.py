"""A real `flwr run` simulation: Flower's simulation engine on Ray, real Opacus, real ResNet-18."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.privacy.ledger import LEDGER_FILE
from common.wire import reply as wire

pytestmark = pytest.mark.integration


def test_three_hospitals_two_rounds_learn_within_budget(tiny_simulation_run: Path) -> None:
    run_dir = tiny_simulation_run
    report = json.loads((run_dir / "report.json").read_text())

    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"], f"no learning: {[r['accuracy'] for r in rounds]}"

    sites = report["sites"]
    assert sorted(s["site_id"] for s in sites) == ["site-0", "site-1", "site-2"]
    for site in sites:
        assert site["rounds_participated"] == [1, 2] and site["refused_rounds"] == []
        # the job asked for 8; each simulated site (lifetime 32, default cap a quarter = 8) granted 8
        assert site["epsilon_budget"] == 32.0 and site["epsilon_granted"] == 8.0
        assert 0 < site["epsilon"] <= 8.0 + 1e-9 and site["randomness"] == "secure"
        assert site["privacy_unit"] == "patient"  # synthetic slides name the patients: patient level by default
        ledger = json.loads((run_dir / "sites" / site["site_id"] / LEDGER_FILE).read_text())
        assert site["epsilon"] == pytest.approx(ledger["epsilon_spent"])  # the report shows what was spent

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len(json.loads(lines[-1])["sites"]) == 3
    declared = {f.key for f in wire.FIELDS if f.record == wire.METRICS}
    for line in lines:  # every value a simulated site sent is declared by the reply schema
        for reply in json.loads(line)["sites"]:
            assert set(reply["metrics"]) == declared and reply["diagnostics"] is None
    for name in ("round-0000.pt", "round-0001.pt", "round-0002.pt", "final.pt"):
        assert (run_dir / "checkpoints" / name).exists()
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)
    assert final["meta"]["arch"] == "resnet18" and "fc.weight" in final["state_dict"]
    assert report["run"]["weights_source"] == "none"  # no ImageNet weights here, and it says so
    assert report["communication"]["total_bytes_up"] > 0
    # FedAdam's global model travels as float32, like FedAvg's: as many bytes down as up, plus the head input mean
    # (center-head = auto from scratch: 512 float32) in each of 3 sites x 2 rounds' instructions
    down, up = report["communication"]["total_bytes_down"], report["communication"]["total_bytes_up"]
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["head_centering"]["applied"] is True
    assert report["run"]["config"]["strategy"] == "fedadam" and down == up + 3 * 2 * 512 * 4
