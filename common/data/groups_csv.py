"""A site's `groups.csv` (`path,group`: which patient or slide each image comes from), read strictly.

The group decides which images stay together in a split and, at patient level, what one
record of differential privacy is; so a row that cannot be read must stop the load rather
than put its image into a shared or wrong group. Excel's exports (BOM, CRLF, semicolons,
UTF-16) are read or refused with the fix.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import posixpath
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from common.data.checks import EXAMPLES, few
from common.data.imageset import DataError

log = logging.getLogger("fedpath.data")


@dataclass
class GroupRows:
    """`path,group` rows of a groups file, with the line each path came from."""

    source: Path
    group_of: dict[str, str] = field(default_factory=dict)
    line_of: dict[str, int] = field(default_factory=dict)



def nfc(path: str) -> str:
    """A path in Unicode NFC: a Mac writes file names decomposed (NFD: 'a' + combining umlaut), Windows and
    most editors composed (NFC); the same name to the eye, different strings, so both sides compare in NFC."""
    return unicodedata.normalize("NFC", path)


def normalise_relpath(path: str) -> str:
    """A groups.csv path in the loader's form: `/`-separated, no `./`, no stray spaces, Unicode NFC."""
    return nfc(posixpath.normpath(path.strip().replace("\\", "/")).removeprefix("./"))



def _decode_csv(path: Path, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is UTF-16 (Excel's 'Unicode Text'); save it as 'CSV UTF-8 (comma delimited)'")
    try:
        return raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line} is not UTF-8 text (byte {raw[err.start]:#04x}); save it as "
            "'CSV UTF-8 (comma delimited)'"
        ) from None



def read_group_rows(path: Path) -> GroupRows:
    """Parse a `path,group` file; any malformed row is an error naming its line.

    UTF-8 with or without a BOM, LF or CRLF, comma, semicolon or tab separated (the
    separator is read from the header). A row without a group must not put its image
    into a shared group, so it stops the load.
    """
    try:
        text = _decode_csv(path, path.read_bytes())
    except OSError as err:
        raise DataError(f"cannot read groups file {path}: {err}") from err
    first = text.splitlines()[0] if text else ""
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "group" not in header:
        raise DataError(f"{path} must have the header 'path,group' on its first line, got {first[:80]!r}")
    ip, ig = header.index("path"), header.index("group")
    rows = GroupRows(path)
    problems: list[str] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            problems.append(f"line {line}: {len(row)} fields, the header has {len(header)} (quote a path or "
                            "group that holds the separator)")
            continue
        cells = row + [""] * (len(header) - len(row))
        rel, group = normalise_relpath(cells[ip]), cells[ig].strip()
        if not cells[ip].strip():
            problems.append(f"line {line}: no path")
        elif not group:
            problems.append(f"line {line}: {cells[ip].strip()!r} has no group")
        elif posixpath.isabs(rel) or rel.startswith("../"):
            problems.append(f"line {line}: {cells[ip].strip()!r} is not relative to the data folder")
        elif rel in rows.group_of and rows.group_of[rel] != group:
            problems.append(f"line {line}: {rel!r} is given group {group!r}, but {rows.group_of[rel]!r} on line "
                            f"{rows.line_of[rel]}")
        else:
            rows.group_of.setdefault(rel, group)
            rows.line_of.setdefault(rel, line)
    if problems:
        raise DataError(
            f"{path} has {len(problems)} malformed row(s): {'; '.join(problems[:EXAMPLES])}"
            + (" ..." if len(problems) > EXAMPLES else "")
            + ". Every row is 'path,group': the image's path relative to the data folder and the patient or "
            "slide it comes from"
        )
    return rows



def report_unmatched_rows(rows: GroupRows, present: set[str]) -> list[str]:
    """Warn about rows naming files the tree does not hold (renamed, moved, deleted)."""
    missing = sorted((rows.line_of[p], p) for p in rows.group_of if p not in present)
    if missing:
        log.warning(
            "%s lists %d file(s) that are not in the data folder (ignored; renamed, moved or deleted?): %s",
            rows.source, len(missing), few([f"line {n}: {p}" for n, p in missing]),
        )
    return [p for _, p in missing]
