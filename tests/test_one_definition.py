"""One definition per fact (issue 22): each fact below is written once and used everywhere.

A fact written twice drifts: the server would score the canaries of a site that does not hold them,
a doc would promise a default the code does not have. Where a fact is a literal, these tests read
the tree (`tests.helpers.source_tree`) and name any copy of it outside its one home.
"""

from __future__ import annotations

from client.identity import site_identity
from common.audit.canaries import AUDITED_PARTITION, AUDITED_SITE
from common.config.run_config import RunConfig
from tests.helpers.source_tree import python_files, relative, string_constants


def _copies(text: str, home: str) -> list[str]:
    """Where the string literal `text` appears outside the file `home` (file:line)."""
    return [f"{relative(path)}:{line}" for path in python_files() if relative(path) != home
            for line, value in string_constants(path) if value == text]


def test_the_audited_site_is_the_simulated_site_that_trains_with_the_canaries(tmp_path: object) -> None:
    """The server scores the updates of `AUDITED_SITE`; the site of partition `AUDITED_PARTITION` holds the canaries."""
    config = RunConfig(output_dir=str(tmp_path))
    identity = site_identity({"partition-id": AUDITED_PARTITION, "num-partitions": 3}, config, 7)
    assert identity.site_id == AUDITED_SITE
    assert _copies(AUDITED_SITE, "common/paths.py") == []
