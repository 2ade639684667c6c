"""The one way fedpath reads a yes/no setting (run config, node config, launcher flags).

Flower passes TOML booleans through, but `--node-config "strict=yes"` arrives as a string, and
three hand-written parsers used to disagree about which strings count (the ClientApp took
"yes", the launcher refused it). A value that is not clearly true or false is an error, never
silently false: for keys like `allow-non-private` or `share-diagnostics` a typo must not pass.
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def parse_bool(value: Any, key: str = "value") -> bool:
    """True/False for a bool, 0/1, or one of TRUE_WORDS/FALSE_WORDS (any case); ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError(f"{key} must be true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), "
                     f"got {value!r}")
