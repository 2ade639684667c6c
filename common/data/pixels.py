"""Stored pixel values to 8 bits: one rule for every format (an image file, an `.npz` array).

Scanners and export tools write 8-bit integers, 10-, 12-, 14- or 16-bit integers in 16-bit
containers, and floats in [0, 1] or [0, 255]. Dividing 12-bit data by 65535, or casting floats
in [0, 1] to bytes, gives near-black images that still train, and black images are an easy
cue, so accuracy can even rise: a silent, misleading result. So the scale is read from the
values' real range, said, and refused with the reason where no scale explains them.

The rule, for the values of one image file or one `.npz` array (all its images at once):

* floats: [0, 1] where the largest value is at most 1, else [0, 255] up to 255; NaN,
  infinities, negatives and larger values are refused;
* 8-bit integers as stored; wider integers up to 255 as 8-bit values in a wider container;
  up to 65535 as N-bit values, N the smallest of 10, 12, 14, 16 that holds the largest value
  (scanners write 10-16 significant bits into 16-bit containers; brightfield slides always
  hold near-white background, so the largest value reaches the top of the real range);
  negatives and values above 65535 are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DEPTHS = (10, 12, 14, 16)  # significant bits a scanner writes into a 16-bit container


class PixelProblem(ValueError):
    """No scale explains the values; the message reads after the name of what holds them."""


@dataclass(frozen=True)
class PixelScale:
    """How stored values map to 8 bits: `top` becomes 255."""

    top: float
    name: str  # "[0, 1]", "12-bit [0, 4095]"
    conversion: str  # what the data summary counts: "12-bit values in 16-bit containers scaled to 8 bits"

    @property
    def as_stored(self) -> bool:
        return self.conversion == ""


AS_STORED = PixelScale(255.0, "[0, 255]", "")


def _range(values: np.ndarray) -> tuple[float, float]:
    return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)


def pixel_scale(values: np.ndarray) -> PixelScale:
    """The scale of these stored values, or PixelProblem saying why none fits."""
    if values.dtype == np.uint8:
        return AS_STORED
    kind = values.dtype.kind
    if kind not in "iuf":
        raise PixelProblem(f"holds {values.dtype} values, not pixel intensities")
    if kind == "f" and values.size and not np.isfinite(values).all():
        raise PixelProblem(f"holds {int((~np.isfinite(values)).sum())} NaN or infinite values")
    low, high = _range(values)
    if low < 0:
        raise PixelProblem(f"({values.dtype}) has values down to {low:g}: pixels cannot be negative (normalised "
                           "with a mean and std?); store the raw pixel values")
    if kind == "f":
        if high <= 1.0:
            return PixelScale(1.0, "[0, 1]", "float values in [0, 1] scaled to 8 bits")
        if high <= 255.0:
            return PixelScale(255.0, "[0, 255]", "float values in [0, 255] rounded to 8 bits")
        raise PixelProblem(f"({values.dtype}) has values up to {high:g}, which fit neither [0, 1] nor [0, 255]; "
                           "store 8-bit pixel values")
    container = 8 * values.dtype.itemsize
    if high <= 255:
        return AS_STORED if container == 8 else PixelScale(
            255.0, "[0, 255]", f"8-bit values in {container}-bit containers kept as 8 bits")
    if high > 65535:
        raise PixelProblem(f"({values.dtype}) has values up to {high:g}, which fit neither 0..255 nor 0..65535; "
                           "store 8-bit pixel values")
    bits = next(b for b in _DEPTHS if high <= 2**b - 1)
    return PixelScale(float(2**bits - 1), f"{bits}-bit [0, {2**bits - 1}]",
                      f"{bits}-bit values in {container}-bit containers scaled to 8 bits")


def to_uint8(values: np.ndarray) -> tuple[np.ndarray, PixelScale]:
    """The values as uint8 (rounded, `top` -> 255) and the scale that was applied."""
    scale = pixel_scale(values)
    if values.dtype == np.uint8:
        return values, scale
    factor = np.float32(255.0 / scale.top)
    return np.clip(values.astype(np.float32) * factor + np.float32(0.5), 0, 255).astype(np.uint8), scale
