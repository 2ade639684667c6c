"""Messy hospital data, round two (issue 25): no test image in training, one label per image.

Exports repeat images: a PACS exports a study twice, an `.npz` copies its test images from train,
one image is filed under two classes. Each test builds such data from tiny generated files and
asserts the outcome: the copies excluded (counted, with the count derived from the files' own
SHA-256s), the conflicting copies dropped or refused naming the files, a class only in the test
set warned about. The malicious-coordinator test crafts the test hashes a deployed site is given.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from client.identity import site_identity
from client.site import SITE_LOG, run_round
from common.config.run_config import RunConfig
from common.data import sources
from common.data.content import read_hash_list
from common.data.folder import load_image_folder
from common.data.imageset import DataError, ImageSet
from common.data.npz import load_npz
from common.privacy.randomness import public_randomness
from common.training.patient_dp import PatientPoissonSampler, patient_counts, patient_index
from common.training.private import without_rows
from deploy.site.preflight import check_site_files
from server.report.compose import compose_report
from server.report.html import render_html
from server.test_hashes import main as write_test_hashes
from simulations.run import preflight
from tests.helpers.report_support import build_run_dir
from tests.helpers.site_inputs import deployed_node, round_request, site_config, site_tree

SIZE = 16


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _exported_twice(root: Path, per_class: int = 12) -> Path:
    """Every image exported twice under another name (a PACS artefact), no groups.csv."""
    for c, name in enumerate(("benign", "tumour")):
        for i in range(per_class):
            original = _image(root / name / f"{i:02d}.png", seed=100 * c + i)
            shutil.copy(original, root / name / f"{i:02d}-again.png")
    return root


def _config(dataset: Path, **extra: object) -> RunConfig:
    return RunConfig.from_mapping({"dataset": str(dataset), "image-size": SIZE, "test-fraction": 0.3, **extra})


# --- the simulation ------------------------------------------------------------------------------------


def test_images_exported_twice_never_reach_a_site_when_their_copy_is_a_test_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _exported_twice(tmp_path / "export")
    config = _config(root)
    test = sources.central_test_set(config)
    validation, _ = sources.server_validation_set(config)  # round-acceptance: a part of the held-out groups
    assert validation is not None and not set(validation.groups.tolist()) & set(test.groups.tolist())
    # without groups.csv a file is its own group: its path; no site holds a copy of any held-out image
    in_test = set(test.groups.tolist()) | set(validation.groups.tolist())
    test_hashes = {_sha256(root / rel) for rel in in_test}
    files = sorted(p for p in root.rglob("*.png"))
    expected = sum(1 for p in files if str(p.relative_to(root)) not in in_test and _sha256(p) in test_hashes)
    assert expected > 0  # the data has the leak to remove
    assert sources.copies_of_test_images(config) == expected
    held = []
    for k in range(2):
        site = sources.simulated_site(config, k, 2)
        held += site.train.content_ids().tolist() + site.val.content_ids().tolist()
    assert not set(held) & test_hashes
    assert len(held) == len(files) - len(in_test) - expected  # nothing else went missing
    preflight([f"dataset='{root}' image-size={SIZE} test-fraction=0.3"], sites=2)
    assert (f"data: excluded {expected} images from every site: byte-identical copies of central test images"
            in capsys.readouterr().out)


def _npz(path: Path, train_labels: np.ndarray, test_labels: np.ndarray, test_from_train: bool = False) -> Path:
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, (len(train_labels), 8, 8, 3), dtype=np.uint8)
    test = train[: len(test_labels)].copy() if test_from_train else rng.integers(0, 256, (len(test_labels), 8, 8, 3),
                                                                                  dtype=np.uint8)
    np.savez(path, train_images=train, train_labels=train_labels, test_images=test, test_labels=test_labels)
    return path


def test_npz_test_images_copied_from_train_are_excluded_from_every_site(tmp_path: Path) -> None:
    """The issue's case: an .npz whose 40 test images were copied from train (40 of 40 at a site)."""
    labels = np.arange(120) % 2
    config = _config(_npz(tmp_path / "copied.npz", labels, labels[:40], test_from_train=True))
    assert sources.copies_of_test_images(config) == 40
    test_hashes = set(sources.central_test_set(config).content_ids().tolist())
    sites = [sources.simulated_site(config, k, 2) for k in range(2)]
    assert sum(len(s.train) + len(s.val) for s in sites) == 80
    assert not test_hashes & {h for s in sites for h in s.train.content_ids().tolist() + s.val.content_ids().tolist()}


def test_a_class_only_in_the_test_set_is_a_preflight_warning_and_a_report_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: an .npz with training counts [47, 49, 44, 0] and class 3 in the test set."""
    train_labels = np.repeat(np.arange(3), [47, 49, 44])
    path = _npz(tmp_path / "four.npz", train_labels, np.repeat(np.arange(4), 5))
    config = _config(path)
    assert sources.classes_without_training_images(config) == ["class-3"]
    preflight([f"dataset='{path}' image-size={SIZE}"], sites=2)
    # of the official test set's 5, those not in the server's validation part (round-acceptance = validation)
    tested = sources.central_test_set(config).class_counts()[3]
    assert 0 < tested <= 5
    assert (f"warning: class class-3: no training images at any of the 2 sites, but {tested} in the central test set"
            in capsys.readouterr().out)
    run_dir = build_run_dir(tmp_path / "runs", rounds=1)
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "classes_without_training_images": ["stroma"]}))
    report = compose_report(run_dir)
    assert report["run"]["classes_without_training_images"] == ["stroma"]
    assert "<strong>class stroma: no training images</strong>" in render_html(report)


# --- one image, one label ---------------------------------------------------------------------------------


def test_one_image_filed_under_two_classes_is_dropped_or_refused_naming_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "export"
    for i in range(4):
        _image(root / "benign" / f"{i}.png", seed=i)
        _image(root / "tumour" / f"{i}.png", seed=10 + i)
    shutil.copy(root / "benign" / "2.png", root / "tumour" / "scan-2.png")  # the same image, the other class
    with caplog.at_level("INFO", logger="fedpath.data"):
        data = load_image_folder(root, SIZE)
    assert data.class_counts() == [3, 4] and data.report.conflicting == 2
    assert "benign/2.png (benign) = tumour/scan-2.png (tumour)" in caplog.text
    with pytest.raises(DataError, match=r"benign/2\.png \(benign\) = tumour/scan-2\.png \(tumour\).*strict=true"):
        load_image_folder(root, SIZE, strict=True)


def test_npz_record_under_two_labels_is_dropped_naming_both(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    images[9] = images[4]
    labels = np.arange(12) % 3  # record 4 is class 1, its copy 9 is class 0
    np.savez(tmp_path / "x.npz", train_images=images, train_labels=labels, test_images=images[:3],
             test_labels=labels[:3])
    with caplog.at_level("INFO", logger="fedpath.data"):
        pool, _ = load_npz(tmp_path / "x.npz", 8)
    assert len(pool) == 10 and pool.report.conflicting == 2
    assert "train_images[4] (class-1) = train_images[9] (class-0)" in caplog.text


# --- a deployed site -------------------------------------------------------------------------------------


def test_test_hashes_are_written_as_sha256sum_and_read_strictly(tmp_path: Path) -> None:
    root = _exported_twice(tmp_path / "export", per_class=6)
    out = tmp_path / "test-hashes.sha256"
    assert write_test_hashes(["--run-config", f"dataset='{root}' image-size={SIZE} test-fraction=0.3",
                              "--out", str(out)]) == 0
    config = _config(root)
    in_test = sources.central_test_set(config).groups.tolist()
    assert read_hash_list(out) == {_sha256(root / rel) for rel in in_test}  # what sha256sum prints for each file
    (tmp_path / "bad.sha256").write_text(f"# made by sha256sum\n{'a' * 64}  x.png\nnot-a-hash  y.png\n")
    with pytest.raises(DataError, match=r"bad\.sha256 line 3 does not start with a SHA-256"):
        read_hash_list(tmp_path / "bad.sha256")


def test_a_deployed_site_withholds_copies_of_test_images_but_counts_them(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", per_class=10)
    targets = [data / "benign" / "3.png", data / "tumour" / "7.png"]
    plain = sources.deployed_site(data, 32, 0.2, b"k" * 32)
    withheld = sources.deployed_site(data, 32, 0.2, b"k" * 32, test_hashes=frozenset(_sha256(p) for p in targets))
    for a, b in ((plain.train, withheld.train),):
        assert len(a) == len(b) and a.class_counts() == b.class_counts()  # every count the site sends or plans with
        assert patient_counts(a.groups, 16) == patient_counts(b.groups, 16)
    in_val = sum(str(p.relative_to(data)) in plain.val.groups.tolist() for p in targets)
    assert int(withheld.train.withheld.sum()) == 2 - in_val and len(withheld.val) == len(plain.val) - in_val
    assert withheld.test_copies == 2
    assert len(withheld.train.trainable()) == len(plain.train) - (2 - in_val)


def test_the_site_pre_flight_says_how_many_test_copies_it_withholds(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", per_class=10)
    (tmp_path / "test.sha256").write_text("".join(f"{_sha256(data / 'benign' / f'{i}.png')}  t{i}.png\n"
                                                  for i in range(3)))
    notes = check_site_files(deployed_node(tmp_path, data, **{"test-hashes": str(tmp_path / "test.sha256")}),
                             write=False).notes
    note = next(n for n in notes if n.startswith("data: "))
    assert ("3 images are byte-identical copies of central test images (test-hashes): "
                                          "counted, never trained or validated on") in note


@pytest.mark.parametrize("patches_per_patient", [1, 3])
def test_withheld_records_never_enter_a_step_and_the_rate_is_that_of_all_records(patches_per_patient: int) -> None:
    n = 60
    groups = np.arange(n) // patches_per_patient
    withheld = np.zeros(n, dtype=bool)
    withheld[[0, 7, 8, 30, 31, 32]] = True  # whole patients and parts of patients
    sampler = PatientPoissonSampler(patient_index(groups), 8, 16, public_randomness("withheld").stream("dp-sampling"))
    full = PatientPoissonSampler(patient_index(groups), 8, 16, public_randomness("other").stream("dp-sampling"))
    assert (sampler.sample_rate, sampler.steps) == (full.sample_rate, full.steps)  # planned from every record
    seen = 0
    for step in sampler:
        kept = without_rows(step, torch.from_numpy(withheld))
        rows = kept.indices.numpy()
        assert not withheld[rows].any()
        assert sorted(rows.tolist()) == sorted(r for r in step.indices.tolist() if not withheld[r])
        assert int(kept.groups.sizes.sum()) == len(rows) and (kept.groups.sizes > 0).all()
        assert patient_index(groups)[rows].tolist() == np.repeat(kept.patients.numpy(), kept.groups.sizes.numpy()).tolist()
        seen += len(rows)
    assert seen > 0


def _reply_values(result: object) -> dict[str, object]:
    """Everything a reply carries but the update: the values a coordinator reads without DP noise."""
    return {"status": result.status, **result.metrics}  # type: ignore[attr-defined]


@pytest.mark.slow  # three site rounds
def test_crafted_test_hashes_do_not_show_in_the_reply(tmp_path: Path) -> None:
    """The attack: a coordinator that holds one patient's image hands the site its hash as a 'test image'
    (or the hashes of every image it can guess), hoping num-examples, privacy-records, the sampling rate,
    the steps or a refusal drop by one when that image is there. They do not: withheld images count."""
    data = site_tree(tmp_path / "data", per_class=30)
    target = data / "benign" / "4.png"
    every = "".join(f"{_sha256(p)}  {p.name}\n" for p in sorted(data.rglob("*.png")))
    files = {"none": "", "target": f"{_sha256(target)}  target.png\n", "every": every}
    config = site_config()
    keys = {"dp-seed": "5eed" * 16, "split-key": "5b11"}  # the same keys in every world: every draw is the same
    replies = {}
    for name, text in files.items():
        (tmp_path / f"{name}.sha256").write_text(text)
        node = deployed_node(tmp_path / name, data, **keys, **{"test-hashes": str(tmp_path / f"{name}.sha256")})
        identity = site_identity(node, config, run_id=1)
        result = run_round(identity, config, round_request(config))
        replies[name] = _reply_values(result)
        local = json.loads((tmp_path / name / "state" / SITE_LOG).read_text().splitlines()[-1])
        replies[name + "-withheld"] = local["test_copies_withheld"]
    assert replies["none"]["status"] == "trained"
    assert replies["target"] == replies["none"] and replies["every"] == replies["none"]
    assert (replies["none-withheld"], replies["target-withheld"], replies["every-withheld"]) == (0, 1, 60)


def test_image_set_checks_its_extra_columns() -> None:
    with pytest.raises(DataError, match="2 images but 1 values of content"):
        ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), np.arange(2).astype(str), ["a"],
                 content=np.asarray(["x"]))
