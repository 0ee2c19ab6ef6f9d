"""Where a jaxsmooth TSV keeps its settings: a JSON file beside it, ``FILE.tsv.json``.

Every TSV jaxsmooth writes (certify, predict, distributional, attack,
attack accuracy) is a plain table: the column header, then one row per
line, so ``pandas.read_csv(path, delimiter="\\t")`` and locuslab/smoothing's
``analyze.py`` read it as it is. What made the rows (program, settings,
notes) is in the sidecar::

    {"program": "certify", "settings": {"mode": "certify", "sigma": 0.25, ...}, "notes": ["..."]}

Files written before the sidecar existed carry the same thing in their
first line, ``# jaxsmooth PROGRAM {JSON settings}``, and comment lines
(``#``) before the header; `read_settings` reads both. The standard library
only.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from jaxsmooth.errors import UserError

SUFFIX = ".json"
LEGACY_HEADER = re.compile(r"#\s*jaxsmooth\s+(\S+)\s*(.*)$")


def path_of(tsv: str) -> str:
    """The sidecar of `tsv`: ``cert.tsv`` -> ``cert.tsv.json``."""
    return tsv + SUFFIX


def write(tsv: str, program: str, settings: dict[str, Any], notes: tuple[str, ...] = ()) -> None:
    """Writes the sidecar of `tsv` atomically (a reader sees the old file or the new one, never half), with the
    mode the TSV gets (the umask's, as `open` makes files), so that whoever reads the results reads their settings."""
    path = path_of(tsv)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump({"program": program, "settings": settings, "notes": list(notes)}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _legacy(tsv: str, first_line: str) -> tuple[str, dict] | None:
    match = LEGACY_HEADER.match(first_line.rstrip("\r\n"))
    if not match:
        return None
    program, text = match.groups()
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{tsv}:1", f"the settings after '# jaxsmooth {program}' are not JSON: {e.msg}") from None
    if not isinstance(settings, dict):
        raise UserError(f"{tsv}:1", f"the settings after '# jaxsmooth {program}' are not one JSON object")
    return program, settings


def _first_line(tsv: str) -> str:
    try:
        with open(tsv, encoding="utf-8") as f:
            return f.readline()
    except (OSError, UnicodeDecodeError):
        return ""


def read_settings(tsv: str) -> tuple[str | None, dict]:
    """(program, settings) of a TSV: from its sidecar, else from a legacy first line; (None, {}) for neither.

    A file with neither (a locuslab/smoothing file) has unknown settings.
    Raises `UserError` naming the file when the sidecar or the legacy line is
    not one JSON object of the expected shape.
    """
    path = path_of(tsv)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(path, f"cannot read the settings of {tsv}: {getattr(e, 'msg', e)}") from None
        if not (isinstance(record, dict) and isinstance(record.get("program"), str)
                and isinstance(record.get("settings"), dict)):
            raise UserError(path, 'is not a jaxsmooth settings file ({"program": ..., "settings": {...}})')
        return record["program"], record["settings"]
    legacy = _legacy(tsv, _first_line(tsv))
    return legacy if legacy is not None else (None, {})


def program_of(tsv: str) -> tuple[str, dict] | None:
    """(program, settings) when `tsv` is a jaxsmooth file of either format; None otherwise or if unreadable."""
    try:
        program, settings = read_settings(tsv)
    except UserError:
        return None
    return None if program is None else (program, settings)


def is_legacy(tsv: str) -> bool:
    """Whether `tsv` carries its settings in a ``# jaxsmooth PROGRAM {...}`` first line (no sidecar)."""
    return not os.path.isfile(path_of(tsv)) and bool(LEGACY_HEADER.match(_first_line(tsv)))


def read_notes(tsv: str) -> list[str]:
    """The notes of a TSV: its sidecar's, or a legacy file's comment lines after the first (without ``# ``)."""
    path = path_of(tsv)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                notes = json.load(f).get("notes", [])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return []
        return [str(n) for n in notes] if isinstance(notes, list) else []
    try:
        with open(tsv, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    notes = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        notes.append(line[1:].strip())
    return notes
