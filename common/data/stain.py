"""Per-site stain/scanner shift, to simulate hospitals whose slides look different.

Works in optical density (Beer-Lambert: OD = -log(I / I0)), where stain amount is
linear: each site gets its own per-channel gain and offset, so one site looks paler,
another more purple, the way different staining protocols and scanners do.
"""

from __future__ import annotations

import numpy as np

_SHIFT = 4


def site_stain_params(strength: float, seed: int, site: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, _SHIFT, site])
    gain = 1.0 + strength * rng.uniform(-1.0, 1.0, size=3)
    offset = 0.15 * strength * rng.uniform(-1.0, 1.0, size=3)
    return gain, offset


def apply_stain_shift(images: np.ndarray, strength: float, seed: int, site: int) -> np.ndarray:
    """Shifted copy of uint8 (N, H, W, 3) `images`; `strength` 0 returns them unchanged."""
    if strength <= 0 or len(images) == 0:
        return images
    gain, offset = site_stain_params(strength, seed, site)
    od = -np.log((images.astype(np.float32) + 1.0) / 256.0)
    od = np.clip(od * gain.astype(np.float32) + offset.astype(np.float32), 0.0, None)
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).astype(np.uint8)
