"""Progress for long work: a tqdm bar on a terminal, periodic log lines elsewhere.

Sites run as daemons whose output goes to log files, where a redrawn bar is noise; on a
terminal the bar is what a person wants to see.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("fedpath.progress")


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", log_every: float = 0.25
) -> Iterator[T]:
    """Iterate `items`, showing a bar on a TTY or a log line each `log_every` of the way."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False)
        return
    next_mark = log_every
    count = 0
    for item in items:
        yield item
        count += 1
        if total and count / total >= next_mark - 1e-9:
            log.info("%s: %d/%d %s (%.0f%%)", desc, count, total, unit, 100.0 * count / total)
            while next_mark <= count / total + 1e-9:
                next_mark += log_every
