"""Where the published outputs live, and the provenance printed beside every number."""

from __future__ import annotations

import json
from typing import Any

from common.paths import REPO

RESULTS = REPO / "docs" / "results"


def meta_line(meta: dict[str, Any]) -> str:
    m, v = meta["machine"], meta["versions"]
    return (
        f"`{meta['command']}` — {meta['date']}; {m['cores']} cores, {m['cpu']}, GPU: {m['gpu']}; "
        f"fedpath {v['fedpath']}, torch {v['torch']}, torchvision {v['torchvision']}, flwr {v['flwr']}, "
        f"opacus {v['opacus']}, Python {v['python']}"
    )


def weights_description(filename: str) -> str:
    sidecar = RESULTS / "weights" / f"{filename}.json"
    if sidecar.exists():
        data = json.loads(sidecar.read_text())
        val = data.get("history", [{}])[-1].get("val_accuracy")
        extra = f"; its own validation accuracy on the public share {100 * val:.1f}%" if val is not None else ""
        return data["description"] + extra
    return "provenance file not found"
