"""One image file to an RGB uint8 patch at `image-size`, as a viewer shows it, saying what was converted.

Pillow opens almost everything, but quietly loses what a scanner stored in two cases: it reads
16-bit RGB(A) PNG and TIFF files as their high bytes only (12-bit data becomes 0..15: black), and it
cannot open float RGB or float64 TIFFs at all. Those pixels are read as stored by `tifffile`
(TIFF) and `pypng` (PNG) instead; every stored value then goes through the one scale rule of
`common.data.pixels`, shared with `.npz` arrays. The EXIF orientation (a camera's or export tool's
"rotate on display") is applied as Pillow's `ImageOps.exif_transpose` does. Each step that changed
a file's pixels is named in `Decoded.conversions`, which the data summary counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from common.data.checks import MAX_PIXELS_KEY, FileProblem, check_pixels
from common.data.pixels import PixelProblem, to_uint8

ORIENTED = "EXIF orientation applied (rotated or mirrored as a viewer shows it)"
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # read as arrays, scaled by the one rule
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_MODE_WORDS = {"L": "grayscale", "LA": "grayscale with transparency", "1": "black-and-white", "P": "palette",
               "PA": "palette with transparency"}


@dataclass(frozen=True)
class Decoded:
    """A file's patch and what was done to its pixels (empty: used as stored)."""

    array: np.ndarray  # (image_size, image_size, 3) uint8
    conversions: tuple[str, ...]


def fit_rgb(img: Image.Image, image_size: int) -> np.ndarray:
    """An RGB image resized + centre-cropped to (image_size, image_size, 3) uint8 (`PIL.ImageOps.fit`)."""
    if img.size != (image_size, image_size):
        img = ImageOps.fit(img, (image_size, image_size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """An 8-bit Pillow image as RGB: transparency composited on white (a slide's background)."""
    if img.mode == "RGB":
        return img, []
    done = f"{_MODE_WORDS.get(img.mode, img.mode)} to RGB"
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
        done += " (transparency composited on white)"
    return img.convert("RGB"), [done]


def _truncated_by_pillow(img: Image.Image) -> bool:
    """A 16-bit-per-sample PNG or TIFF with several channels, which Pillow reads as its high bytes only."""
    if img.format not in ("PNG", "TIFF") or img.mode in _HIGH_DEPTH_MODES:
        return False
    return any(";16" in str(tile.args) for tile in img.tile)  # raw modes such as RGB;16B, RGBA;16L


def _png_values(path: Path) -> np.ndarray:
    """A PNG's samples as stored (16-bit kept), with pypng."""
    import png  # noqa: PLC0415 - only for the rare 16-bit RGB(A) PNG

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = int(info["planes"])
    values = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    return values[..., 0] if planes == 1 else values


def _tiff_values(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    """A TIFF's first image as stored (any sample type) and its orientation tag, with tifffile."""
    import tifffile  # noqa: PLC0415 - only for TIFFs Pillow cannot read faithfully

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            check_pixels((int(page.imagewidth), int(page.imagelength)), max_pixels)
            values = page.asarray()
            axes = page.axes
            tag = page.tags.get("Orientation")
            orientation = int(tag.value) if tag is not None else 1
    except FileProblem:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for one unreadable file
        if "imagecodecs" in str(err):  # LZW, JPEG, ... in a 16-bit or float TIFF: tifffile decodes them with it
            raise FileProblem(f"this TIFF's compression needs the imagecodecs package ({err}): pip install "
                              "imagecodecs, or export the image uncompressed or with deflate (zip)") from None
        raise FileProblem(f"cannot read this TIFF ({type(err).__name__}: {err})") from None
    if values.ndim == 3 and axes.startswith("S"):  # planar (one plane per channel): channels last
        values = np.moveaxis(values, 0, -1)
    return values, orientation


def _from_values(values: np.ndarray, what: str) -> tuple[Image.Image, list[str]]:
    """Stored values (H, W[, C]) as an 8-bit Pillow image, by the one scale rule."""
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (2, 3, 4)):
        raise FileProblem(f"{what} of shape {values.shape}: not a grayscale, RGB or RGBA image")
    try:
        converted, scale = to_uint8(values)
    except PixelProblem as err:
        raise FileProblem(f"the image {err}") from None
    mode = {2: "L", 3: {2: "LA", 3: "RGB", 4: "RGBA"}.get(values.shape[-1], "RGB")}[values.ndim]
    return Image.fromarray(np.ascontiguousarray(converted), mode=mode), [] if scale.as_stored else [scale.conversion]


def _oriented(img: Image.Image, orientation: int) -> Image.Image:
    """`img` turned as EXIF `orientation` says, by Pillow's own `exif_transpose`."""
    if orientation in (0, 1):
        return img
    img.getexif()[ExifTags.Base.Orientation] = orientation
    return ImageOps.exif_transpose(img)


def _open(path: Path, max_pixels: int) -> Image.Image | None:
    """Pillow's lazy view of the file, or None for a TIFF only tifffile reads (float RGB, float64)."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise FileProblem(f"{err} More than {MAX_PIXELS_KEY}={max_pixels:,} pixels (raise {MAX_PIXELS_KEY} if "
                          "this is a real image, or export it smaller)") from None
    except UnidentifiedImageError:
        with path.open("rb") as handle:
            if handle.read(4) in _TIFF_MAGIC:
                return None
        raise
    return img


def decode_file(path: Path, image_size: int, max_pixels: int) -> Decoded:
    """One file as an RGB patch; any failure is about this file alone (FileProblem and Pillow's errors)."""
    if path.stat().st_size == 0:
        raise FileProblem("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels decides
        img = _open(path, max_pixels)
        if img is None:
            values, orientation = _tiff_values(path, max_pixels)
            rgb, done = _from_values(values, "TIFF")
            return _finish(rgb, done, orientation, image_size)
        with img:
            check_pixels(img.size, max_pixels)
            truncated = _truncated_by_pillow(img)  # before getexif, which loads a PNG (and so clears its tiles)
            orientation = int(img.getexif().get(ExifTags.Base.Orientation, 1) or 1)
            if truncated:
                values = _png_values(path) if img.format == "PNG" else _tiff_values(path, max_pixels)[0]
                rgb, done = _from_values(values, img.format)
            elif img.mode in _HIGH_DEPTH_MODES:
                rgb, done = _from_values(np.asarray(img), img.mode)
            else:
                img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale
                rgb, done = img.copy(), []
        return _finish(rgb, done, orientation, image_size)


def _finish(img: Image.Image, done: list[str], orientation: int, image_size: int) -> Decoded:
    rgb, mode_change = to_rgb(img)
    if orientation not in (0, 1):
        rgb, done = _oriented(rgb, orientation), [*done, ORIENTED]
    return Decoded(fit_rgb(rgb, image_size), tuple(done + mode_change))
