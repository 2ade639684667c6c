"""resume-from refuses checkpoints of another model, naming the file and what was expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.resume import ResumeError, find_resume_point
from server.run_store import RunStore

META = {"arch": "resnet18", "policy": "norm-head", "classes": ["a", "b"], "frozen_fingerprint": "f" * 64}
SHAPES = {"fc.weight": (2, 512), "fc.bias": (2,)}


def _store(tmp_path: Path, meta: dict, shapes: dict = SHAPES) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.write_json("run.json", {"run_id": 1})
    state = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
    store.save_round_checkpoint(1, state, meta)
    store.save_round_checkpoint(2, state, meta)
    return store


def test_latest_checkpoint_is_the_resume_point(tmp_path: Path) -> None:
    point = find_resume_point(_store(tmp_path, META), META, SHAPES)
    assert point.completed_round == 2 and set(point.state) == set(SHAPES)


@pytest.mark.parametrize(("key", "value"), [("arch", "resnet50"), ("classes", ["a", "b", "c"]),
                                           ("policy", "head"), ("frozen_fingerprint", "0" * 64)])
def test_checkpoint_of_another_model_is_refused(tmp_path: Path, key: str, value: object) -> None:
    store = _store(tmp_path, {**META, key: value})
    with pytest.raises(ResumeError, match=rf"round-0002\.pt was made with {key}="):
        find_resume_point(store, META, SHAPES)


def test_checkpoint_with_other_shapes_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, META, {"fc.weight": (3, 512), "fc.bias": (3,)})
    with pytest.raises(ResumeError, match="does not fit the model"):
        find_resume_point(store, META, SHAPES)


def test_not_a_run_directory_or_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no run.json"):
        find_resume_point(RunStore(tmp_path / "empty"), META, SHAPES)
    store = RunStore(tmp_path / "fresh")
    store.write_json("run.json", {"run_id": 1})
    with pytest.raises(ResumeError, match="no round checkpoint yet"):
        find_resume_point(store, META, SHAPES)
    (store.checkpoints / "round-0001.pt").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="cannot read checkpoint"):
        find_resume_point(store, META, SHAPES)
