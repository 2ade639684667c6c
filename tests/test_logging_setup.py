"""Each Flower log line is printed once, although Opacus configures the root logger on import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a Python subprocess importing Flower and Opacus
def test_a_flower_line_is_printed_once_with_opacus_loaded() -> None:
    probe = (
        "import logging, opacus.utils.module_utils; from flwr.common.logger import log; "
        "from common.logging_setup import setup_logging; setup_logging(); "
        "log(logging.INFO, 'fedpath-probe-line'); logging.getLogger('fedpath.x').info('fedpath-own-line')"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    output = done.stdout + done.stderr
    assert output.count("fedpath-probe-line") == 1, output
    assert output.count("fedpath-own-line") == 1, output
