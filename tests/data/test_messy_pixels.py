"""Messy hospital data, round two (issue 25): pixels as scanned, one class per name, Mac file names.

Each test writes a few tiny files the way a scanner or export tool does and asserts the pixels the
loader makes of them, computed independently (integer arithmetic on the stored values), or the
refusal naming the file. 16-bit PNGs are written byte by byte here (zlib + struct), not with the
library the loader reads them with.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from common.data.folder import load_image_folder
from common.data.imageset import DataError
from common.data.npz import load_npz
from common.data.sources import check_classes
from simulations.run import preflight

SIZE = 16


def _png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG (grayscale, RGB or RGBA) holding exactly `values` (big-endian samples, filter 0)."""
    height, width = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    colour = {1: 0, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def _expected(values: np.ndarray, top: int) -> np.ndarray:
    """What a stored integer becomes at 8 bits when `top` is white: round(v * 255 / top), as RGB."""
    scaled = np.floor(values.astype(np.float64) * 255 / top + 0.5).astype(np.uint8)
    return np.repeat(scaled[..., None], 3, axis=-1) if scaled.ndim == 2 else scaled[..., :3]


def _tree_of(root: Path, files: dict[str, np.ndarray | None]) -> Path:
    """`benign/x.png` style paths; None writes a distinct 8-bit PNG (so every class has an image)."""
    for i, (rel, values) in enumerate(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if values is None:
            Image.fromarray(np.full((SIZE, SIZE, 3), 40 + i, np.uint8)).save(path)
        elif path.suffix == ".png":
            _png16(path, values)
        else:
            tifffile.imwrite(path, values, photometric="rgb" if values.ndim == 3 else "minisblack")
    return root


def _loaded(root: Path, name: str) -> np.ndarray:
    data = load_image_folder(root, SIZE, use_cache=False)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.*"))
    assert len(data) == len(files), data.report.skipped_examples
    return data.images[files.index(name)]


# --- pixels as scanned --------------------------------------------------------------------------------


def test_float_tiffs_in_unit_range_are_not_black(tmp_path: Path) -> None:
    """The issue's case: a float32 TIFF in [0, 1] decoded to mean 0.0."""
    levels = np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3))
    rgb = ((levels + 0.25) / 255).astype(np.float32)  # a quarter level off: rounding has one answer
    levels[0, 0], rgb[0, 0] = 255, 1.0  # white background
    gray = rgb[..., 0]
    root = _tree_of(tmp_path / "export", {"a/rgb.tif": rgb, "a/gray.tif": gray, "b/x.png": None})
    assert np.array_equal(_loaded(root, "a/rgb.tif"), levels)  # tifffile: Pillow cannot open float RGB
    assert np.array_equal(_loaded(root, "a/gray.tif"), np.repeat(levels[..., :1], 3, axis=-1))  # Pillow's mode F


def test_float_tiff_in_byte_range_keeps_its_levels(tmp_path: Path) -> None:
    levels = np.random.default_rng(2).integers(0, 255, (SIZE, SIZE, 3))
    values = (levels + 0.25).astype(np.float32)
    levels[0, 0], values[0, 0] = 255, 255.0
    root = _tree_of(tmp_path / "export", {"a/rgb.tif": values, "b/x.png": None})
    assert np.array_equal(_loaded(root, "a/rgb.tif"), levels)


@pytest.mark.parametrize(("bits", "channels"), [(12, 1), (12, 3), (14, 3), (16, 1), (10, 4)])
def test_high_bit_depth_pngs_are_scaled_by_their_real_range(tmp_path: Path, bits: int, channels: int) -> None:
    """The issue's case: 12-bit scanner data in a 16-bit PNG decoded to mean 7.5 (divided by 65535).
    Pillow reads 16-bit RGB PNGs as their high bytes only (12-bit data becomes 0..15)."""
    top = 2**bits - 1
    shape = (SIZE, SIZE) if channels == 1 else (SIZE, SIZE, channels)
    values = np.random.default_rng(bits).integers(0, top + 1, shape)
    values.flat[0] = top  # white background: the real range reaches its top
    if channels == 4:
        values[..., 3] = top  # opaque
    root = _tree_of(tmp_path / "export", {"a/scan.png": values, "b/x.png": None})
    assert np.array_equal(_loaded(root, "a/scan.png"), _expected(values, top))


def test_sixteen_bit_rgb_tiff_is_read_as_stored(tmp_path: Path) -> None:
    values = np.random.default_rng(3).integers(0, 4096, (SIZE, SIZE, 3)).astype(np.uint16)
    values[0, 0] = 4095
    root = _tree_of(tmp_path / "export", {"a/scan.tif": values, "b/x.png": None})
    assert np.array_equal(_loaded(root, "a/scan.tif"), _expected(values, 4095))


def test_a_compressed_sixteen_bit_tiff_without_its_codec_names_the_fix(tmp_path: Path) -> None:
    if importlib.util.find_spec("imagecodecs") is not None:
        pytest.skip(reason="imagecodecs is installed here, so tifffile has the LZW codec this test does without")
    root = _tree_of(tmp_path / "export", {"a/x.png": None, "b/x.png": None})
    path = root / "a" / "lzw.tif"
    tifffile.imwrite(path, np.full((SIZE, SIZE, 3), 4095, np.uint16), photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        where = tif.pages.first.tags["Compression"].valueoffset
    raw = bytearray(path.read_bytes())
    raw[where:where + 2] = (5).to_bytes(2, "little")  # the tag now says LZW, as a scanner's export would
    path.write_bytes(bytes(raw))
    data = load_image_folder(root, SIZE, use_cache=False)
    assert data.report.skipped == 1
    assert "a/lzw.tif: this TIFF's compression needs the imagecodecs package" in data.report.skipped_examples[0]


def test_npz_twelve_bit_arrays_share_the_rule(tmp_path: Path) -> None:
    values = np.random.default_rng(4).integers(0, 4096, (12, 8, 8, 3)).astype(np.uint16)
    values[0, 0, 0, 0] = 4095
    np.savez(tmp_path / "scans.npz", train_images=values, train_labels=np.arange(12) % 3, test_images=values[:3],
             test_labels=np.arange(3))
    pool, _ = load_npz(tmp_path / "scans.npz", 8)
    assert np.array_equal(pool.images, _expected(values, 4095))
    assert pool.report.conversions == {"12-bit values in 16-bit containers scaled to 8 bits": 12}


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (np.full((SIZE, SIZE, 3), 300.0, np.float32), r"has values up to 300, which fit neither \[0, 1\] nor \[0, 255\]"),
        (np.full((SIZE, SIZE, 3), -0.5, np.float32), "pixels cannot be negative"),
        (np.full((SIZE, SIZE, 3), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_pixels_no_scale_explains_are_skipped_or_refused_naming_the_file(
    tmp_path: Path, values: np.ndarray, reason: str
) -> None:
    root = _tree_of(tmp_path / "export", {"a/bad.tif": values, "a/ok.png": None, "b/x.png": None})
    data = load_image_folder(root, SIZE, use_cache=False)
    assert len(data) == 2 and data.report.skipped == 1
    assert data.report.skipped_examples[0].startswith("a/bad.tif: the image")
    with pytest.raises(DataError, match=f"unreadable image {root / 'a' / 'bad.tif'}: the image .*{reason}"):
        load_image_folder(root, SIZE, strict=True, use_cache=False)


def _quadrant_image() -> np.ndarray:
    """Black but for a white top-left quadrant: where it ends up says how the image was turned."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[: SIZE // 2, : SIZE // 2] = 255
    return image


@pytest.mark.parametrize(("orientation", "shown"), [
    (2, lambda a: a[:, ::-1]),  # mirrored left-right
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # stored turned left: shown turned 90 degrees clockwise
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_is_applied_as_a_viewer_shows_it(tmp_path: Path, orientation: int, shown: object) -> None:
    stored = _quadrant_image()
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "export" / "a").mkdir(parents=True)
    Image.fromarray(stored).save(tmp_path / "export" / "a" / "turned.png", exif=exif)
    root = _tree_of(tmp_path / "export", {"b/x.png": None})
    assert np.array_equal(_loaded(root, "a/turned.png"), shown(stored))  # type: ignore[operator]


def test_exif_orientation_of_a_jpeg_and_a_float_tiff(tmp_path: Path) -> None:
    stored = _quadrant_image()
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    root = tmp_path / "export"
    (root / "a").mkdir(parents=True)
    Image.fromarray(stored).save(root / "a" / "camera.jpg", exif=exif, quality=95)
    tifffile.imwrite(root / "a" / "scan.tif", stored.astype(np.float32) / 255, photometric="rgb",
                     extratags=[(0x0112, "H", 1, 3, True)])  # TIFF's own Orientation tag
    _tree_of(root, {"b/x.png": None})
    data = load_image_folder(root, SIZE, use_cache=False)
    for image in data.images[:2]:  # a/camera.jpg, a/scan.tif: the white quadrant is now bottom-right
        assert image[-SIZE // 2:, -SIZE // 2:].mean() > 200 and image[: SIZE // 2, : SIZE // 2].mean() < 55
    assert data.report.conversions["EXIF orientation applied (rotated or mirrored as a viewer shows it)"] == 2


def test_the_data_summary_says_which_conversions_were_applied_to_how_many_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    levels = np.random.default_rng(5).integers(0, 4096, (3, SIZE, SIZE))
    levels[:, 0, 0] = 4095
    files: dict[str, np.ndarray | None] = {f"a/{i}.png": levels[i] for i in range(3)}
    files.update({f"a/f{i}.tif": np.full((SIZE, SIZE, 3), 0.1 * (i + 1), np.float32) for i in range(2)})
    files.update({f"b/{i}.png": None for i in range(4)})
    root = _tree_of(tmp_path / "export", files)
    data = load_image_folder(root, SIZE)
    assert data.report.conversions == {
        "12-bit values in 16-bit containers scaled to 8 bits": 3, "grayscale to RGB": 3,
        "float values in [0, 1] scaled to 8 bits": 2,
    }
    assert data.report.converted == 5
    assert load_image_folder(root, SIZE).report.conversions == data.report.conversions  # from the cache too
    preflight([f"dataset='{root}' image-size={SIZE} test-fraction=0.3"], sites=1)
    assert ("data: converted 5 images: 12-bit values in 16-bit containers scaled to 8 bits: 3; float values in "
            "[0, 1] scaled to 8 bits: 2; grayscale to RGB: 3") in capsys.readouterr().out


# --- one class per name --------------------------------------------------------------------------------


def test_class_folders_that_name_one_class_are_refused_naming_both(tmp_path: Path) -> None:
    """The issue's case: `lung_aca ` and `Lung_N` beside `lung_aca` and `lung_n` became five classes."""
    names = ["lung_aca", "lung_aca ", "lung_n", "Lung_N", "lung_scc"]
    root = _tree_of(tmp_path / "export", {f"{name}/{i}.png": None for name in names for i in range(3)})
    with pytest.raises(DataError, match="name the same class") as info:
        load_image_folder(root, SIZE)
    message = str(info.value)
    for name in names[:4]:
        assert repr(str(root / name)) in message, name
    assert "lung_scc" not in message
    with pytest.raises(Exception, match="name the same class"):  # the launcher, in simulation, says it before a run
        preflight([f"dataset='{root}' image-size={SIZE}"])


def test_a_decomposed_and_a_composed_folder_name_are_one_class(tmp_path: Path) -> None:
    composed = unicodedata.normalize("NFC", "Tumorstroma-ä")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    root = _tree_of(tmp_path / "export", {f"{composed}/0.png": None, f"{decomposed}/0.png": None, "b/0.png": None})
    with pytest.raises(DataError, match="Unicode form"):
        load_image_folder(root, SIZE)


def test_a_site_class_named_differently_from_the_federation_says_how(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"differ only in case, surrounding spaces or Unicode form \('Lung_aca ' is "
                                        r"'lung_aca'\).*rename the folder"):
        check_classes(["Lung_aca ", "lung_n"], ["lung_aca", "lung_n"], "site s's data")


def test_groups_csv_written_on_windows_matches_file_names_saved_on_a_mac(tmp_path: Path) -> None:
    """The issue's over-strict case: NFD file names against an NFC groups.csv were refused as 'no group'."""
    names = [unicodedata.normalize("NFD", f"Müller-{i}.png") for i in range(4)]
    root = _tree_of(tmp_path / "export", {f"{c}/{name}": None for c in ("a", "b") for name in names})
    rows = "".join(f"{c}/{unicodedata.normalize('NFC', name)},{'p' + str(i % 2)}\n"
                   for c in ("a", "b") for i, name in enumerate(names))
    (root / "groups.csv").write_text("path,group\n" + rows, encoding="utf-8")
    data = load_image_folder(root, SIZE)
    assert sorted(data.groups.tolist()) == ["p0"] * 4 + ["p1"] * 4 and data.patient_groups


def test_conversions_are_logged_with_their_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree_of(tmp_path / "export", {"a/f.tif": np.full((SIZE, SIZE), 0.5, np.float32), "b/x.png": None})
    with caplog.at_level(logging.INFO, logger="fedpath.data"):
        load_image_folder(root, SIZE, use_cache=False)
    assert "converted 1 files under" in caplog.text and "float values in [0, 1] scaled to 8 bits: 1" in caplog.text
