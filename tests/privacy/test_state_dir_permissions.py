"""A site's state on disk (ledger, own log, split key, lock, decoded-image cache) is its user's alone.

Attack: another account on the site's machine reads `state-dir`: the ledger (every job and round),
the site log (refusal reasons, names of unreadable files), the split key (which patients sit in
validation) or decoded patient images. Written first with the loosest umask (0), under which
plain `open()` creates world-readable files: the directory must come out 0700, every file 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.identity import SiteIdentity
from client.site import SITE_LOG, run_round
from client.site_keys import SPLIT_KEY_FILE, site_split_key
from common.data.folder import cache_dir, load_image_folder
from common.files import atomic_write_text
from common.privacy.integrity import KEY_FILE
from common.privacy.ledger import LEDGER_FILE, PrivacyLedger, site_lock
from tests.conftest import write_image_tree
from tests.helpers.site_inputs import new_site


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask: whatever the site does not restrict itself ends up readable by everyone."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _deployed(state: Path, data: Path) -> SiteIdentity:
    return SiteIdentity(site_id="site-a", deployed=True, state_dir=state, epsilon_budget=8.0, delta=1e-3,
                        data_path=data, epsilon_per_job=8.0, val_fraction=0.2, privacy_unit="patch",
                        accept_new_ledger=new_site()["accept-new-ledger"])


def test_every_state_dir_file_of_a_real_round_is_private(tmp_path: Path, open_umask: None) -> None:
    from client.round_types import RoundRequest
    from common.config.run_config import RunConfig
    from common.model.factory import initial_model
    from common.model.network import frozen_fingerprint, get_trainable_state
    from tests.conftest import tiny_run_config

    data = write_image_tree(tmp_path / "data", per_class=20)
    state = tmp_path / "state"
    config = RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 1}))
    model, _ = initial_model(config, 2)
    request = RoundRequest(1, 1, get_trainable_state(model), ["benign", "tumour"], frozen_fingerprint(model))
    assert run_round(_deployed(state, data), config, request).status == "trained"
    files = sorted(p for p in state.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {LEDGER_FILE, KEY_FILE, SITE_LOG, SPLIT_KEY_FILE, ".lock"}
    assert _mode(state) == 0o700
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_an_existing_world_readable_state_dir_is_tightened(tmp_path: Path, open_umask: None) -> None:
    """A state-dir from before: 0755 with 0644 files. The site's next writes leave none of it readable."""
    from client.round_types import RoundRequest
    from client.site import _append_site_log

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    PrivacyLedger.open(state, "site-a", 1e-5, 8.0).save()
    (state / SITE_LOG).write_text("{}\n")
    (state / SPLIT_KEY_FILE).write_text("ab" * 32 + "\n")
    (state / ".lock").touch()
    for path in (state, *state.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    site = _deployed(state, tmp_path / "data")
    with site_lock(state):
        PrivacyLedger.open(state, "site-a", 1e-5, 8.0).save()  # atomic: the new file is 0600 from its creation
    site_split_key(site)
    _append_site_log(site, RoundRequest(1, 1, {}, [], ""), {"status": "refused"})
    assert (state / SITE_LOG).read_text().startswith("{}\n")  # appended to, not replaced
    assert _mode(state) == 0o700
    assert {p.name: _mode(p) for p in state.iterdir()} == {p.name: 0o600 for p in state.iterdir()}


def test_private_atomic_writes_and_the_image_cache(tmp_path: Path, open_umask: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPATH_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "new" / "file.json"
    atomic_write_text(target, "{}", private=True)
    assert (_mode(target.parent), _mode(target)) == (0o700, 0o600)
    public = tmp_path / "report.html"
    atomic_write_text(public, "<html>")  # the coordinator's report is not a site's secret: the umask decides
    assert _mode(public) == 0o666
    load_image_folder(write_image_tree(tmp_path / "tree", per_class=3), 32)  # decoded patient images
    cached = list(cache_dir().glob("imagefolder-*.npz"))
    assert cached and _mode(cache_dir()) == 0o700 and {_mode(p) for p in cached} == {0o600}
