"""Small run directories and shared checks for the report tests.

A run directory is written with the project's own pieces: the validated run config
(`RunConfig`), the run store (`RunStore`), the strategy's reply record (`SiteReply`) and the
metric code (`common.evaluation.metrics`) applied to predictions of a classifier that gets better every
round. The report code then reads it exactly as it reads a real run's directory; the one real
`flwr run` run is covered by tests/report/test_report_integration.py.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.config.run_config import RunConfig
from common.evaluation.metrics import full_evaluation, headline_metrics
from server.round_acceptance import VALIDATION, RoundAcceptance
from server.run_store import RunStore
from server.strategy import SiteReply

CLASSES = ["adipose", "stroma", "lymphocytes", "tumour"]
BUDGET, DELTA = 8.0, 1e-5


def predictions(labels: np.ndarray, strength: float, seed: int) -> tuple[np.ndarray, float]:
    """Softmax outputs of a classifier whose evidence for the true class grows with `strength`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), labels] += strength
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))
    return probs, loss


def site_reply(site: int, server_round: int, rounds: int, status: str = "trained", reason: str = "",
               dp: bool = True) -> dict[str, Any]:
    """One site's reply as the strategy records it; epsilon grows to just under the budget."""
    epsilon = BUDGET * (0.55 + 0.4499 * (server_round - 1) / max(rounds - 1, 1)) - 0.01 * site
    metrics = {
        "num-examples": 130 + site, "epsilon": epsilon if dp else 0.0, "epsilon-budget": BUDGET,
        "epsilon-asked": BUDGET, "epsilon-granted": BUDGET, "delta": DELTA,
        "noise-multiplier": 1.5 if dp else 0.0, "max-grad-norm": 1.0, "steps": 5, "sample-rate": 0.2,
        "privacy-records": 130 + site,
        "dp": int(dp), "shares-diagnostics": 1,
    }
    diagnostics = {"train-loss": 1.2, "val-accuracy": 0.5 + 0.05 * site, "val-examples": 26,
                   "class-counts": [31 + site, 35, 31, 36], "skipped-files": 0, "train-seconds": 3.0}
    node = 1000 + site
    if status == "failed":
        return SiteReply(node, f"node-{node}", "failed", reason, bytes_down=51984).as_dict()
    up = 0 if status == "refused" else 51984
    return SiteReply(node, f"site-{site}", status, reason, metrics, diagnostics, "secure", "patch",
                     "round-exceeds-budget" if status == "refused" else "", 51984, up).as_dict()


def build_run_dir(
    root: Path, *, rounds: int = 3, sites: int = 3, weights_kind: str = "none", complete: bool = True,
    dp: bool = True, missing: dict[tuple[int, int], tuple[str, str]] | None = None, test_size: int = 160,
    validation: list[float] | None = None,
) -> Path:
    """A run directory with round 0..`rounds`; `missing[(round, site)] = (status, reason)`.

    `validation`: each round's validation accuracy (round 0 first), judged by the server's own rule
    (`server.round_acceptance`) and recorded as the server records it; the end model is the last kept one.
    """
    rule = RoundAcceptance(VALIDATION) if validation is not None else None
    run_dir = root / "run-4242"
    store = RunStore(run_dir)
    config = RunConfig.from_mapping({"num-server-rounds": rounds, "dp": dp, "epsilon": BUDGET, "delta": DELTA,
                                     "seed": 3, "bootstrap-samples": 200}).to_mapping()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), test_size)
    weights = {"kind": weights_kind, "path": None, "sha256": None,
               "description": "none: random initialisation (from scratch)" if weights_kind == "none" else
               "ImageNet (torchvision IMAGENET1K_V1)"}
    if weights_kind != "none":
        weights.update(path="/hub/checkpoints/resnet18-f37072fd.pth", sha256="f37072fd" + "0" * 56)
    start = 1_764_000_000.0
    store.write_json("run.json", {
        "run_id": 4242, "config": config, "start": start, "end": start + 95.0 if complete else None,
        "versions": {"fedpath": "0.1.0", "torch": "2.14.1", "flwr": "1.42.0", "opacus": "1.6.0"},
        "weights": weights, "classes": CLASSES, "test_examples": test_size,
        "test_class_counts": np.bincount(labels, minlength=len(CLASSES)).tolist(), "trainable_parameters": 11652,
    })
    missing = missing or {}
    probs = None
    for r in range(rounds + 1):
        probs, loss = predictions(labels, 0.3 + 0.6 * r, seed=r)
        replies = [site_reply(s, r, rounds, *missing.get((r, s), ("trained", "")), dp=dp)
                   for s in range(sites)] if r > 0 else []
        acceptance = None
        if rule is not None and validation is not None:
            decision = rule.start(0, validation[0]) if r == 0 else rule.judge(r, validation[r])
            acceptance = decision.as_dict()
        store.append_round({"round": r, **headline_metrics(labels, probs), "loss": loss, "sites": replies,
                            "time": start + 10 * r, **({"acceptance": acceptance} if acceptance else {})})
    if complete and probs is not None:
        final = full_evaluation(labels, probs, CLASSES, bootstrap_samples=200, seed=3)
        kept = {"kept_round": rule.kept_round} if rule is not None else {}
        store.write_json("final-eval.json", {"round": rounds, **kept, **final, "loss": loss})
    return run_dir


# ---- checks shared by the report tests -------------------------------------------------------------

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "loss")
SITE_KEYS = ("site_id", "num_examples", "class_counts", "rounds_participated", "local_val_accuracy", "epsilon",
             "epsilon_budget", "delta", "noise_multiplier", "max_grad_norm", "refused_rounds", "epsilon_asked",
             "epsilon_granted", "randomness", "privacy_unit", "shares_diagnostics")


def check_schema(report: dict[str, Any]) -> None:
    """Every key issue 3 names, with its type; shared with the test on a real `flwr run` run."""
    assert report["schema"] == "fedpath-report/1"
    run = report["run"]
    for key in ("config", "start", "end", "versions", "weights_source", "weights_sha256", "complete"):
        assert key in run, key
    assert isinstance(run["config"], dict) and run["config"]["num-server-rounds"] >= 0
    for package in ("fedpath", "torch", "flwr", "opacus"):
        assert isinstance(run["versions"][package], str), package
    assert run["weights_source"] in ("none", "imagenet", "file")
    assert run["weights_sha256"] is None or len(run["weights_sha256"]) == 64

    rounds = report["rounds"]
    assert rounds and rounds[0]["round"] == 0 and rounds[0]["sites"] == []  # round 0 = the initial model
    assert [r["round"] for r in rounds] == sorted({r["round"] for r in rounds})
    for line in rounds:
        assert set(HEADLINE) | {"round", "sites"} <= set(line)
        assert all(line[k] is None or isinstance(line[k], float) for k in HEADLINE)
        assert 0.0 <= line["accuracy"] <= 1.0

    final = report["final"]
    if run["complete"]:
        for key in HEADLINE[:4]:
            low, high = final["ci95"][key]
            assert low <= final[key] <= high, key
        assert isinstance(final["loss"], float) and 0.0 <= final["ece"] <= 1.0
        table = final["per_class"]
        assert len(table["precision"]) == len(table["recall"]) == len(table["f1"]) == len(run["classes"])
        matrix = final["confusion_matrix"]
        assert len(matrix) == len(run["classes"]) and sum(map(sum, matrix)) == run["test_examples"]

    assert report["sites"]
    for site in report["sites"]:
        assert set(SITE_KEYS) <= set(site), set(SITE_KEYS) - set(site)
        assert isinstance(site["rounds_participated"], list) and isinstance(site["refused_rounds"], list)
        if site["dp"] and site["epsilon"] is not None:
            assert 0.0 < site["epsilon"] <= site["epsilon_budget"]  # cumulative spend, within budget
            assert 0.0 < site["delta"] < 1.0 and site["noise_multiplier"] > 0.0
        assert site["privacy_statement"].startswith(f"Site {site['site_id']} ")
        if site["dp"] and site["epsilon"] is not None:  # the statement says what protection was in force
            assert f"unit of privacy: one {site['privacy_unit']}" in site["privacy_statement"]
            assert site["randomness"] in ("secure", "site-seed") and "noise:" in site["privacy_statement"]

    comm = report["communication"]
    for entry in comm["per_site_round"]:
        assert set(entry) == {"round", "site_id", "bytes_down", "bytes_up"}
        assert isinstance(entry["bytes_down"], int) and entry["bytes_down"] > 0
    assert comm["total_bytes_down"] == sum(e["bytes_down"] for e in comm["per_site_round"])
    assert isinstance(report["baselines"], list)


SECTION_IDS = ("summary", "learning-curves", "confusion-matrix", "per-class", "reliability", "sites",
               "rounds-without-update", "baselines", "communication", "configuration", "what-sites-sent",
               "how-to-read")


class Page(HTMLParser):
    """The parts of a page these tests look at: ids, tags, every URL-bearing attribute, the title."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tags: set[str] = set()
        self.urls: list[tuple[str, str, str]] = []
        self.title = ""
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self._in_title = tag == "title"
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
            if name in ("src", "href", "action", "srcset", "poster", "data") and value is not None:
                self.urls.append((tag, name, value))

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def assert_self_contained(text: str) -> Page:
    """Nothing the browser would fetch: no script, stylesheet link, external URL or CSS import."""
    page = Page(text)
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}, page.tags
    for tag, name, value in page.urls:
        if tag == "img":
            assert value.startswith("data:image/png;base64,"), value[:60]
        else:
            assert value.startswith("#"), (tag, name, value)  # in-page links only
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text, re.IGNORECASE)
    assert "@import" not in text and "url(" not in text
    return page


def png_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text):
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG"
            sizes.append(image.size)
    return sizes
