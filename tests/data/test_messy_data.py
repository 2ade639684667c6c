"""Messy hospital exports (issue 16): refused naming the file, or skipped and counted, or loaded right.

Each test builds one defective folder or file in a temp dir, from a few real LC25000 patches
(skipped where that data is absent) or tiny synthetic images, and asserts the outcome.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config.run_config import ConfigError
from common.data import sources
from common.data.checks import check_splittable
from common.data.folder import cache_dir, load_image_folder
from common.data.imageset import DataError
from common.data.npz import PATHMNIST_CLASSES, load_npz
from simulations.run import main, preflight

SIZE = 16


def _png(path: Path, seed: int, size: tuple[int, int] = (24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _tree(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _png(root / name / f"{i}.png", seed=seed + 100 * c + i)
    return root


def _real_tree(lc25000: Path, root: Path, per_class: int = 3) -> Path:
    """A small ImageFolder of real LC25000 patches (copied into a temp dir, never the repo)."""
    for name in ("lung_aca", "lung_n", "lung_scc"):
        (root / name).mkdir(parents=True)
        for source in sorted((lc25000 / name).iterdir())[:per_class]:
            shutil.copy(source, root / name / source.name)
    return root


# --- directory structure -----------------------------------------------------------------------


def test_symlink_back_to_the_root_is_refused_not_read_as_an_extra_class(lc25000: Path, tmp_path: Path) -> None:
    root = _real_tree(lc25000, tmp_path / "export")
    os.symlink(root, root / "all")  # the case: became a 4th class holding every image again
    with pytest.raises(DataError, match="the data folder itself") as info:
        load_image_folder(root, SIZE)
    assert str(root / "all") in str(info.value) and "the data folder itself" in str(info.value)


def test_class_folder_linked_inside_the_tree_is_refused_naming_both(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"benign": 3, "tumour": 3})
    os.symlink(root / "benign", root / "tumour" / "more")  # benign images again, as tumour
    with pytest.raises(DataError, match="read twice") as info:
        load_image_folder(root, SIZE)
    message = str(info.value)
    assert str(root / "benign") in message and str(root / "tumour" / "more") in message
    assert "symlink" in message and "read twice" in message


def test_linked_folder_outside_the_tree_is_followed(tmp_path: Path) -> None:
    storage = _tree(tmp_path / "storage", {"scans": 4}, seed=1000)  # other images than the export's
    root = _tree(tmp_path / "export", {"benign": 3})
    os.symlink(storage / "scans", root / "tumour")  # an export assembled from links is fine
    data = load_image_folder(root, SIZE)
    assert data.classes == ["benign", "tumour"] and data.class_counts() == [3, 4]


def test_empty_class_folder_is_refused_naming_it(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"benign": 3, "tumour": 3})
    (root / "necrosis").mkdir()
    with pytest.raises(DataError, match=r"necrosis hold no files"):
        load_image_folder(root, SIZE)
    # a deployed site may declare a federation class it has no images of, with images of others
    data = load_image_folder(root, SIZE, known_classes=["benign", "necrosis", "tumour"])
    assert data.class_counts() == [3, 0, 3]
    with pytest.raises(DataError, match="necrosis hold no files"):
        load_image_folder(root, SIZE, known_classes=["benign", "tumour"])


def test_export_with_only_empty_class_folders_is_refused(tmp_path: Path) -> None:
    for name in ("benign", "tumour"):
        (tmp_path / "export" / name).mkdir(parents=True)
    with pytest.raises(DataError, match="hold no files") as info:
        load_image_folder(tmp_path / "export", SIZE, known_classes=["benign", "tumour"])
    assert "benign" in str(info.value) and "tumour" in str(info.value)


def test_single_class_folder_names_the_real_cause(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export" / "nested", {"benign": 3, "tumour": 3}).parent  # one level too high
    with pytest.raises(DataError, match=r"only one class folder \('nested'\)") as info:
        load_image_folder(root, SIZE)
    assert "only one class folder ('nested')" in str(info.value) and str(root / "nested") in str(info.value)


def test_class_whose_every_file_is_unreadable_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"benign": 3})
    (root / "tumour").mkdir()
    (root / "tumour" / "a.png").write_bytes(b"")
    (root / "tumour" / "b.png").write_text("not an image")
    with pytest.raises(DataError, match=r"tumour hold no readable images.*skipped as unreadable"):
        load_image_folder(root, SIZE)


def test_hidden_files_and_folders_are_skipped_counted_never_trained_on(lc25000: Path, tmp_path: Path) -> None:
    root = _real_tree(lc25000, tmp_path / "export")
    checkpoints = root / "lung_n" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    for source in (root / "lung_n").glob("*.jpeg"):
        shutil.copy(source, checkpoints / source.name)  # the case: trained on as extra copies
    (root / "lung_aca" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".git").mkdir()
    for strict in (False, True):  # never data, so never an error either
        data = load_image_folder(root, SIZE, strict=strict)
        assert data.class_counts() == [3, 3, 3] and data.report.skipped == 0
        assert data.report.hidden == 3 and "lung_n/.ipynb_checkpoints" in data.report.hidden_examples
    again = load_image_folder(root, SIZE)  # served from the decode cache: still counted
    assert again.report.hidden == 3


# --- groups.csv ----------------------------------------------------------------------------------


def test_groups_csv_from_excel_with_bom_and_crlf_loads(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"a": 2, "b": 2})
    rows = "path,group\r\na/0.png,p1\r\na/1.png,p1\r\n.\\b\\0.png,p2\r\nb/1.png,p3\r\n"
    (root / "groups.csv").write_bytes(codecs.BOM_UTF8 + rows.encode())
    assert sorted(load_image_folder(root, SIZE).groups.tolist()) == ["p1", "p1", "p2", "p3"]


def test_groups_csv_with_semicolons_loads(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"a": 2, "b": 1})
    (root / "groups.csv").write_text("path;group\na/0.png;p1\na/1.png;p1\nb/0.png;p2\n")
    assert sorted(load_image_folder(root, SIZE).groups.tolist()) == ["p1", "p1", "p2"]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("a/0.png,p1\na/1.png\nb/0.png,p2\n", r"line 3: 'a/1\.png' has no group"),  # the case
        ("a/0.png,p1\na/1.png,\nb/0.png,p2\n", r"line 3: 'a/1\.png' has no group"),
        ("a/0.png,p1\n,p2\nb/0.png,p2\n", r"line 3: no path"),
        ("a/0.png,p1\n/data/a/1.png,p1\nb/0.png,p2\n", r"line 3: '/data/a/1\.png' is not relative"),
        ("a/0.png,p1\na/1.png,p1,extra\nb/0.png,p2\n", r"line 3: 3 fields, the header has 2"),
        ("a/0.png,p1\na/1.png,p1\nb/0.png,p2\na/0.png,p9\n", r"line 5: 'a/0\.png' is given group 'p9', but 'p1' on line 2"),
    ],
)
def test_malformed_groups_csv_row_is_an_error_naming_its_line(tmp_path: Path, rows: str, expected: str) -> None:
    root = _tree(tmp_path / "export", {"a": 2, "b": 1})
    (root / "groups.csv").write_text("path,group\n" + rows)
    with pytest.raises(DataError, match=expected):
        load_image_folder(root, SIZE)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ("path,group\na/0.png,p1\n".encode("utf-16"), "UTF-16"),
        ("path,group\na/0.png,Müller\n".encode("latin-1"), "line 2 is not UTF-8"),
    ],
)
def test_groups_csv_in_another_encoding_says_how_to_save_it(tmp_path: Path, encoded: bytes, expected: str) -> None:
    root = _tree(tmp_path / "export", {"a": 1, "b": 1})
    (root / "groups.csv").write_bytes(encoded)
    with pytest.raises(DataError, match=f"{expected}.*CSV UTF-8"):
        load_image_folder(root, SIZE)


def test_groups_csv_rows_for_missing_files_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree(tmp_path / "export", {"a": 2, "b": 1})
    (root / "groups.csv").write_text("path,group\na/0.png,p1\na/1.png,p1\nb/0.png,p2\nb/7.png,p3\n")
    with caplog.at_level(logging.WARNING, logger="fedpath.data"):
        data = load_image_folder(root, SIZE)
    assert len(data) == 3
    assert "lists 1 file(s) that are not in the data folder" in caplog.text and "line 5: b/7.png" in caplog.text


# --- one odd file never ends the run ---------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny file declaring a huge PNG: what PIL's decompression-bomb guard stops."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_skipped_counted_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree(tmp_path / "export", {"benign": 3, "tumour": 3})
    _png_header_only(root / "tumour" / "bomb.png", 20_000, 20_000)
    with caplog.at_level(logging.INFO, logger="fedpath.data"):
        data = load_image_folder(root, SIZE)
    assert len(data) == 6 and data.report.skipped == 1
    assert "tumour/bomb.png" in data.report.skipped_examples[0] and "max-image-pixels" in data.report.skipped_examples[0]
    assert "tumour/bomb.png" in caplog.text
    with pytest.raises(DataError, match="max-image-pixels") as info:
        load_image_folder(root, SIZE, strict=True)
    assert str(root / "tumour" / "bomb.png") in str(info.value) and "max-image-pixels" in str(info.value)


def test_pixel_limit_is_configurable_and_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"benign": 2, "tumour": 2})
    _png(root / "tumour" / "large.png", 9, size=(40, 40))
    data = load_image_folder(root, SIZE, max_pixels=1_000)
    assert data.report.skipped == 1
    assert "40 x 40 = 1,600 pixels, more than max-image-pixels=1,000" in data.report.skipped_examples[0]
    assert len(load_image_folder(root, SIZE, max_pixels=2_000)) == 5


def test_link_loops_and_broken_links_are_skipped_or_named_in_strict_mode(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {"benign": 3, "tumour": 3})
    os.symlink("loop.png", root / "benign" / "loop.png")
    os.symlink(tmp_path / "gone.png", root / "tumour" / "gone.png")
    data = load_image_folder(root, SIZE)
    assert len(data) == 6 and data.report.skipped == 2
    assert any("Too many levels of symbolic links" in e for e in data.report.skipped_examples)
    with pytest.raises(DataError, match=r"benign/loop\.png.*strict=true"):
        load_image_folder(root, SIZE, strict=True)


def test_every_skipped_file_is_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree(tmp_path / "export", {"benign": 2, "tumour": 2})
    for i in range(8):
        (root / "tumour" / f"broken-{i}.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.INFO, logger="fedpath.data"):
        data = load_image_folder(root, SIZE)
    assert data.report.skipped == 8 and len(data.report.skipped_examples) == 5  # what may be sent is capped
    assert all(f"tumour/broken-{i}.png" in caplog.text for i in range(8))


# --- .npz files ------------------------------------------------------------------------------------


def _npz(path: Path, images: np.ndarray | None = None, labels: np.ndarray | None = None, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    n = 12 if labels is None else len(labels)
    images = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8) if images is None else images
    labels = np.arange(n) % 3 if labels is None else labels
    np.savez(path, train_images=images, train_labels=labels, test_images=images, test_labels=labels, **extra)
    return path


def test_npz_labels_up_to_255_are_refused_not_256_classes(tmp_path: Path) -> None:
    labels = np.array([0, 1, 255] * 4)
    with pytest.raises(DataError, match="256 classes, 253 of them with no images") as info:
        load_npz(_npz(tmp_path / "export.npz", labels=labels), SIZE)
    assert "export.npz" in str(info.value) and "256 classes, 253 of them with no images" in str(info.value)
    assert "255 marks 'unlabelled'" in str(info.value)


def test_npz_pathmnist_names_explain_labels_with_a_missing_class(tmp_path: Path) -> None:
    pool, _ = load_npz(_npz(tmp_path / "pathmnist_site.npz", labels=np.array([0, 1, 2, 4] * 3)), SIZE)
    assert pool.classes == PATHMNIST_CLASSES


def test_npz_float_images_in_unit_range_are_scaled_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = np.full((12, 8, 8, 3), 0.5, dtype=np.float32)  # the case: read as black images
    images[:, 0, 0, 0] = np.arange(12) / 255  # twelve different images (copies under two labels are dropped)
    with caplog.at_level(logging.WARNING, logger="fedpath.data"):
        pool, test = load_npz(_npz(tmp_path / "floats.npz", images=images), 8)
    assert pool.images[:, 1:].min() == pool.images[:, 1:].max() == 128 and test.images[:, 1:].max() == 128
    assert pool.images[:, 0, 0, 0].tolist() == list(range(12))
    assert "assumed the [0, 1] scale" in caplog.text and "floats.npz" in caplog.text


def test_npz_float_images_in_byte_range_are_kept_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = np.full((12, 8, 8, 3), 200.0)
    images[:, 0, 0, 0] = np.arange(12)  # twelve different images
    with caplog.at_level(logging.WARNING, logger="fedpath.data"):
        pool, _ = load_npz(_npz(tmp_path / "floats.npz", images=images), 8)
    assert pool.images.max() == 200 and len(pool) == 12 and "assumed the [0, 255] scale" in caplog.text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((12, 8, 8, 3), 300.0), r"up to 300, which fit neither \[0, 1\] nor \[0, 255\]"),
        (np.full((12, 8, 8, 3), -0.5), "normalised with a mean and std"),
        (np.full((12, 8, 8, 3), np.nan), "NaN or infinite"),
        (np.full((12, 8, 8, 3), 70_000, dtype=np.int32), "fit neither 0..255 nor 0..65535"),
    ],
)
def test_npz_pixel_values_no_scale_explains_are_refused(tmp_path: Path, values: np.ndarray, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_npz(_npz(tmp_path / "bad.npz", images=values), 8)


def test_text_file_named_npz_gets_no_pickle_advice(tmp_path: Path) -> None:
    (tmp_path / "export.npz").write_text("patient,label\n1,tumour\n")
    with pytest.raises(DataError, match="is not a valid .npz file") as info:
        load_npz(tmp_path / "export.npz", SIZE)
    assert "is not a valid .npz file" in str(info.value) and "text" in str(info.value)
    assert "pickle" not in str(info.value).lower()


def test_zip_of_other_files_says_what_it_holds(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "export.npz", "w") as archive:
        archive.writestr("tumour/0001.png", b"png bytes")
        archive.writestr("README.txt", b"scanner export")
    with pytest.raises(DataError, match=re.escape("zip archive of 2 file(s) (tumour/0001.png, README.txt)")) as info:
        load_npz(tmp_path / "export.npz", SIZE)
    assert "zip archive of 2 file(s) (tumour/0001.png, README.txt)" in str(info.value)


def test_single_npy_array_named_npz_is_named_for_what_it_is(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(DataError, match=r"single NumPy array \(\.npy\)"):
        load_npz(tmp_path / "x.npz", SIZE)


def test_npz_with_python_objects_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = _npz(tmp_path / "objects.npz", notes=np.array([{"patient": 1}], dtype=object))
    with pytest.raises(DataError, match="'notes' holds Python objects") as info:
        load_npz(path, SIZE)
    assert "'notes' holds Python objects" in str(info.value) and "allow_pickle" not in str(info.value)


def test_npz_missing_arrays_lists_what_it_holds(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2, int))
    with pytest.raises(DataError, match=r"It holds: images \(2, 8, 8, 3\) uint8, labels \(2,\) int64"):
        load_npz(tmp_path / "x.npz", SIZE)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.eye(3, dtype=np.int64)[np.arange(12) % 3], r"shape \(12, 3\).*argmax"),
        (np.zeros(12, dtype=np.int64), r"every image has label \[0\]"),
        (np.arange(12) % 3 + 0.5, "non-integer values"),
    ],
)
def test_npz_labels_that_are_not_classes_are_refused(tmp_path: Path, labels: np.ndarray, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_npz(_npz(tmp_path / "bad.npz", labels=labels), SIZE)


def test_npz_images_beyond_the_pixel_limit_or_channels_first_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"64 x 64 = 4,096 pixels, more than max-image-pixels=1,000"):
        load_npz(_npz(tmp_path / "big.npz", images=np.zeros((12, 64, 64, 3), np.uint8)), SIZE, max_pixels=1_000)
    with pytest.raises(DataError, match="channels first"):
        load_npz(_npz(tmp_path / "chw.npz", images=np.zeros((12, 3, 8, 8), np.uint8)), SIZE)


# --- the dataset as a whole ------------------------------------------------------------------------


def test_folder_per_patient_names_the_layout_not_test_fraction(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {f"patient-{i:03d}": 1 for i in range(200)})  # the case
    data = load_image_folder(root, SIZE)
    with pytest.raises(DataError, match="200 of 200 classes have images of only one group") as info:
        check_splittable(data.labels, data.groups, data.classes, "dataset X")
    assert "200 of 200 classes have images of only one group" in str(info.value)
    assert "one patient or slide rather than one class" in str(info.value) and "test-fraction" not in str(info.value)


def test_images_of_one_class_only_name_the_real_cause() -> None:
    with pytest.raises(DataError, match="only class 'tumour' has images"):
        check_splittable(np.zeros(10, int), np.arange(10).astype(str), ["benign", "tumour"][::-1], "dataset X")


# --- the launcher's pre-flight ---------------------------------------------------------------------


def test_preflight_says_a_data_error_in_one_block_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path / "export", {"benign": 3, "tumour": 3})
    (root / "necrosis").mkdir()
    code = main(["--run-config", f"dataset='{root}' image-size={SIZE}", "--output-dir", str(tmp_path / "runs"),
                 "--flwr-home", str(tmp_path / "flwr")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "runs").exists()
    assert err.startswith("error: the data cannot be used, so nothing was started.")
    assert str(root / "necrosis") in err and "Traceback" not in err and "TROUBLESHOOTING" in err


def test_preflight_checks_the_split_the_server_will_make(tmp_path: Path) -> None:
    root = _tree(tmp_path / "export", {f"patient-{i}": 1 for i in range(6)})
    with pytest.raises(ConfigError, match="only one group"):
        preflight([f"dataset='{root}' image-size={SIZE}"])


def test_preflight_decodes_once_for_the_server_and_sites(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree(tmp_path / "export", {"benign": 6, "tumour": 6})
    (root / "tumour" / "zero.png").write_bytes(b"")
    before = set(cache_dir().glob("imagefolder-*.npz"))
    run_config = [f"dataset='{root}' image-size={SIZE} test-fraction=0.3"]
    preflight(run_config, sites=2)
    assert len(set(cache_dir().glob("imagefolder-*.npz")) - before) == 1
    hits = sources.load_source.cache_info().hits
    from common.config.run_config import RunConfig

    config = RunConfig.from_mapping({"dataset": str(root), "image-size": SIZE, "test-fraction": 0.3})
    assert len(sources.central_test_set(config)) > 0  # what the ServerApp calls: answered from memory
    assert sources.load_source.cache_info().hits == hits + 1
    with caplog.at_level(logging.INFO, logger="fedpath.data"):  # another process: answered from disk
        again = load_image_folder(root, SIZE)
    assert "from cache" in caplog.text and again.report.skipped == 1
