"""One log format for fedpath's own messages, on the server and at sites."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping


def setup_logging(level: int = logging.INFO) -> None:
    """Route `fedpath.*` loggers to stderr once per process (Flower streams it)."""
    logger = logging.getLogger("fedpath")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # Opacus calls logging.basicConfig() when imported, which gives the root logger a handler;
    # Flower's logger has its own console handler and also propagates, so every Flower line
    # was printed twice (once in Flower's format, once in Opacus'). One line per event:
    logging.getLogger("flwr").propagate = False


@contextlib.contextmanager
def log_levels(levels: Mapping[str, int]) -> Iterator[None]:
    """Set logger levels for a block and restore them after, so callers in the same process
    (tests, notebooks) keep seeing the warnings they expect."""
    saved = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
