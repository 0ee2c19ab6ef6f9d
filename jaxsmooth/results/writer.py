"""Writing a result file: `Writer` appends whole rows and resumes an existing file after its last complete row.

The file is a plain table (the column header, then one row per line) and
its settings are in the sidecar ``FILE.tsv.json`` (`jaxsmooth.results.sidecar`),
so ``pandas.read_csv(path, delimiter="\\t")`` and locuslab/smoothing's
analysis scripts read it as it is. Floats are written at full precision
(``repr``). The standard library only.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from jaxsmooth import jobs
from jaxsmooth.errors import UserError
from jaxsmooth.results import sidecar
from jaxsmooth.results.schema import Schema
from jaxsmooth.results.table import is_cut


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("-inf" if value < 0 else "inf" if value > 0 else "nan")
    return str(value)


class Writer:
    """Appends rows to a result file of `schema` with these `settings`; resumes an existing file after its last row.

    A new file gets its sidecar ``FILE.tsv.json`` (the schema's program, the
    `settings`, its notes and `notes`), then its column line: `columns`
    (default: all the schema's). On an existing file the schema's identity
    settings must equal the file's (a field the file lacks counts as the
    schema's recorded default), else a `UserError` names the first that
    differs and the file is left as it was. A last row cut off by a killed
    job (`table.is_cut`) is dropped and its example redone; so are the rows
    of a last example left incomplete where an example has several rows
    (`Schema.rows_per_example`); `done` lists each complete example once. A
    file of the earlier format (settings on a ``# jaxsmooth PROGRAM {...}``
    first line) is rewritten in the new one when resumed. With
    ``enabled=False`` (the processes that do not write) the file is only read.
    """

    def __init__(self, path: str, schema: Schema, settings: dict[str, Any], columns: Sequence[str] | None = None, *,
                 enabled: bool = True, notes: tuple[str, ...] = ()):
        self.path, self.schema, self.enabled = path, schema, enabled
        self.columns = list(schema.header() if columns is None else columns)
        self.rows_per_example = schema.rows_per_example(settings)
        notes = schema.notes + tuple(notes)
        self.done: list[int] = []
        if os.path.exists(path):
            self.done = self._resume(settings, notes)
        elif enabled:
            _make_folder(path)
            with jobs.write_errors("out", path):
                sidecar.write(path, schema.program, settings, notes)
                with open(path, "w") as f:
                    f.write("\t".join(self.columns) + "\n")
        self._file = open(path, "a") if enabled else None

    def _resume(self, settings: dict[str, Any], notes: tuple[str, ...]) -> list[int]:
        old = self._check_settings(settings)
        legacy = sidecar.is_legacy(self.path)
        with open(self.path) as f:
            lines = [line for line in f.read().splitlines(keepends=True) if not line.startswith("#")]
        kept, cut = _complete_rows(lines, len(self.columns), self.rows_per_example)
        if not kept:  # killed between writing the sidecar and the column line
            kept, cut = ["\t".join(self.columns) + "\n"], True
        if kept[0].rstrip("\n").split("\t") != self.columns:
            raise UserError("out", f"{self.path} has columns {kept[0].rstrip() if kept else 'none'!r}, expected "
                                   f"{chr(9).join(self.columns)!r}; choose another --out")
        if (cut or legacy) and self.enabled:
            if legacy:  # the earlier format: settings move to the sidecar, the table loses its comment lines
                sidecar.write(self.path, self.schema.program, old, tuple(sidecar.read_notes(self.path)) or notes)
            with jobs.write_errors("out", self.path):
                _replace(self.path, "".join(kept))
        done = [int(line.split("\t")[0]) for line in kept[1:]]
        return list(dict.fromkeys(done)) if self.rows_per_example > 1 else done

    def _check_settings(self, settings: dict[str, Any]) -> dict:
        """The existing file's settings, after refusing another program's file or other identity settings."""
        if os.path.isdir(self.path):
            raise UserError("out", f"{self.path} is a directory; give a file name")
        try:
            program, old = sidecar.read_settings(self.path)
        except UserError as e:
            raise UserError("out", f"{e}; choose another --out") from None
        if program != self.schema.program:
            what = "was not written by jaxsmooth" if program is None else f"was written by jaxsmooth {program}"
            raise UserError("out", f"{self.path} {what}, not jaxsmooth {self.schema.program} (its settings file "
                                   f"{sidecar.path_of(self.path)} is missing or names another program); "
                                   "choose another --out")
        for field in self.schema.identity:
            was, now = (s.get(field, self.schema.defaults.get(field)) for s in (old, settings))
            if was != now:
                raise UserError("out", f"{self.path} was written with {field}={was!r}, not {now!r}; choose "
                                       "another --out to change it")
        return old

    def write(self, row: dict[str, Any]) -> None:
        """Appends `row` (column name -> value; other keys ignored) in one write, or nothing (a full disk)."""
        if self._file is not None:
            jobs.append_line(self._file, "\t".join(_format(row[c]) for c in self.columns) + "\n", "out")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _complete_rows(lines: list[str], width: int, rows_per_example: int) -> tuple[list[str], bool]:
    """(the column line and the complete rows, whether any were dropped) of a table's lines (with newlines).

    A row cut off by a killed job (`is_cut`) is dropped; so are the rows of a
    last example left incomplete when an example has `rows_per_example` rows.
    """
    kept = list(lines)
    cut = False
    while len(kept) > 1 and is_cut(kept[-1].rstrip("\n").split("\t"), width, kept[-1].endswith("\n")):
        kept.pop()
        cut = True
    if rows_per_example > 1 and len(kept) > 1:
        last = kept[-1].split("\t")[0]
        tail = 0
        while tail < len(kept) - 1 and kept[len(kept) - 1 - tail].split("\t")[0] == last:
            tail += 1
        if tail < rows_per_example:
            del kept[len(kept) - tail:]
            cut = True
    return kept, cut


def _make_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError("out", f"cannot create the folder of {path}: a part of {folder} is a file, "
                               "not a folder") from None
    except OSError as e:
        raise UserError("out", f"cannot create the folder {folder}: {e.strerror}") from None


def _replace(path: str, text: str) -> None:
    """Replaces `path`'s content atomically (a kill leaves the old file or the new one)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
