"""The one atomic-write helper: a failed write leaves the old file and no debris."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.files import atomic_file, atomic_write_json, atomic_write_text


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ledger.json"
    atomic_write_json(target, {"spent": 1.0})
    with pytest.raises(RuntimeError, match="crash mid-write"), atomic_file(target) as handle:
        handle.write('{"spent": 9')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"spent": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_text_binary_and_new_folders(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "b.txt", "é\n")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "é\n"
    with atomic_file(tmp_path / "c.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
