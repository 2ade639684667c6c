"""The rule for a site's `dp-seed`: at least 128 bits of secret key material, written as hex.

Torch-free, so the run config's checks and the site launcher's pre-flight can apply it without
loading torch; `common.privacy.randomness` keys the site's streams with it.
"""

from __future__ import annotations

import re

MIN_DP_SEED_HEX_DIGITS = 32  # a dp-seed carries at least 128 bits of key material
_HEX = re.compile(r"[0-9a-fA-F]+")
DP_SEED_HELP = ("dp-seed must be at least 32 hexadecimal digits (128 bits of secret key material), e.g. the output of "
                "`python -c \"import secrets; print(secrets.token_hex(32))\"`")


def dp_seed_problem(dp_seed: str) -> str | None:
    """Why `dp-seed` cannot key a site's randomness, or None when it can ("" = no seed: fresh keys)."""
    if dp_seed == "":
        return None
    if not _HEX.fullmatch(dp_seed) or len(dp_seed) % 2:
        return f"{DP_SEED_HELP}; it is not an even number of hexadecimal digits"
    if len(dp_seed) < MIN_DP_SEED_HEX_DIGITS:
        return f"{DP_SEED_HELP}; it has {len(dp_seed) * 4} bits"
    return None
