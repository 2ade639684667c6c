"""Rules of an ImageFolder tree as a whole: hidden files, folders reached twice, empty class folders.

Checked before any image is decoded, so a tree that would silently train on duplicates or on
a class with no images is refused in one message naming the folders (`common/data/checks.py`
says why each rule refuses rather than guesses).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from common.data.checks import EXAMPLES
from common.data.imageset import DataError

_OS_CLUTTER = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})  # written by file managers, never data


def is_hidden(name: str) -> bool:
    """Dot-files/folders (`.DS_Store`, `.ipynb_checkpoints`) and OS clutter are never data."""
    return name.startswith(".") or name in _OS_CLUTTER



def class_key(name: str) -> str:
    """A class name as names are compared: Unicode NFC, surrounding spaces stripped, case folded.

    Only for checking: `lung_aca `, `Lung_ACA` and `lung_aca` are one class to a pathologist, and as
    three folders they would silently be three classes (or a site's class the federation lacks).
    """
    return unicodedata.normalize("NFC", name).strip().casefold()


def check_class_names(root: Path, classes: Sequence[str]) -> None:
    """Refuse class folders whose names differ only in case, surrounding spaces or Unicode form."""
    same: dict[str, list[str]] = {}
    for name in classes:
        same.setdefault(class_key(name), []).append(name)
    clashes = [names for names in same.values() if len(names) > 1]
    if clashes:
        named = "; ".join(" and ".join(repr(str(root / n)) for n in names) for names in clashes[:EXAMPLES])
        raise DataError(
            f"class folders that name the same class (names are compared ignoring case, surrounding spaces and "
            f"Unicode form): {named}. Move the images into one folder per class and delete the other"
        )


def seen_before(directory: str, root_real: str, seen: dict[str, str]) -> str | None:
    """What `directory` (relative to the root) duplicates, or None after recording it.

    A directory reached twice (a symlink to another folder of the tree, or to the root or
    one of its parents) would feed the same images twice, possibly as another class.
    """
    real = os.path.realpath(os.path.join(root_real, directory))
    if real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep):
        return "." if real == root_real else real  # the root itself, or a folder above it: a loop
    if real in seen:
        return seen[real]
    seen[real] = directory
    return None



def _first_link(root: Path, rel: str) -> Path | None:
    """The first symlink on the way from `root` to `rel`, if any."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            return path
    return None



def aliases_error(root: Path, aliases: list[tuple[str, str]]) -> DataError:
    """The refusal for directories reached twice, naming each link and what it repeats."""
    lines = []
    for path, original in aliases:
        links = [link for link in (_first_link(root, path), _first_link(root, original) if original != "." and
                 not os.path.isabs(original) else None) if link is not None]
        via = f" (through the symlink {links[0]})" if links else ""
        if original == ".":
            lines.append(f"{root / path} is the data folder itself{via}")
        elif os.path.isabs(original):
            lines.append(f"{root / path} is {original}, a folder above the data folder (a loop){via}")
        else:
            lines.append(f"{root / path} and {root / original} are the same directory{via}")
    return DataError(
        "directories inside the data folder are reached twice, so their images would be read twice, possibly "
        "as another class: " + "; ".join(lines[:EXAMPLES]) + (" ..." if len(lines) > EXAMPLES else "")
        + ". Remove the link, or replace it by a real folder holding other images"
    )



def check_class_folders(
    root: Path, classes: list[str], counts: Sequence[int], known_classes: Sequence[str] | None = None,
    what: str = "files",
) -> list[str]:
    """Refuse a tree with fewer than 2 classes or with classes that hold no images.

    An empty folder would become a class that nothing is trained or tested on (macro
    metrics dragged down, nothing said). A deployed site may declare a class it has no
    images of with an empty folder, but only one the federation has (`known_classes`), and
    only if it has images of some class. Returns the classes so declared.
    """
    if known_classes is None and len(classes) < 2:
        raise DataError(
            f"{root} has only one class folder ({classes[0]!r}); a classifier needs at least 2 classes, one "
            f"sub-folder each. If {root / classes[0]} holds the class folders, point the data path there"
        )
    empty = [c for c, n in zip(classes, counts) if n == 0]
    declared = [c for c in empty if known_classes is not None and c in known_classes]
    wrong = empty if len(empty) == len(classes) else [c for c in empty if c not in declared]
    if wrong:
        named = ", ".join(str(root / c) for c in wrong)
        raise DataError(
            f"class folder(s) {named} hold no {what}, so each would be a class nothing is trained or tested "
            "on. Add its images or delete the folder"
            + ("" if what == "files" else " (the files there were skipped as unreadable, or dropped as copies of "
               "files in another class folder; see the log above)")
        )
    return declared
