"""Reading a result file back: `read` gives a `Table` of typed columns, whatever the kind.

A file is a plain table, the column header then one row per line; its
settings are in its sidecar (`jaxsmooth.results.sidecar`), or in a
``# jaxsmooth PROGRAM {...}`` first line in files of the earlier format,
whose ``#`` comment lines are skipped. locuslab/smoothing's files have no
settings; their mode is told by their header (a radius column: certify).
The kind's `Schema` types each column and says what it refuses; every bad
input is a `UserError` naming the file (and line). A last line cut off by
a killed job is left out (`is_cut`: the one rule, shared with the writer's
resume). NumPy and the standard library only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from jaxsmooth.errors import UserError
from jaxsmooth.results import sidecar
from jaxsmooth.results.files import SCHEMAS
from jaxsmooth.results.schema import DTYPE, NOT_A, PARSE, STR, Schema


@dataclasses.dataclass(frozen=True)
class Table:
    """One result file, read.

    Attributes:
      path: the file read.
      label: its name in tables and legends (`Schema.label` unless given).
      schema: its kind (`jaxsmooth.results.files`).
      settings: its sidecar's settings; ``{}`` for a locuslab/smoothing file.
      columns: name -> [N] array, one entry per row, typed by the schema: int64, float64 (``-inf``,
        ``nan`` kept), time as float64 seconds; other columns as str.
      ignored_line: 1-based number of the partial last line left out, or None.
    """

    path: str
    label: str
    schema: Schema
    settings: dict
    columns: dict
    ignored_line: int | None = None

    @property
    def kind(self) -> str:
        return self.schema.kind

    @property
    def mode(self) -> str | None:
        return self.schema.mode

    @property
    def num_examples(self) -> int:
        """The examples (distinct idx) it has rows of."""
        return int(np.unique(self.columns["idx"]).size)


def is_cut(fields: list[str], width: int, terminated: bool,
           readable: Callable[[list[str]], bool] | None = None) -> bool:
    """Whether a table's last line (its `fields`) is a row cut off by a killed job.

    Rows are written whole with their newline (`jobs.append_line`), so only
    the last line can be cut: it is when its field count is not the header's
    `width`, or when it has no newline (`terminated` false) and it does not
    read (``readable(fields)`` false). The writer, which appends after it,
    passes no `readable`: a number cut short may still read, so any last line
    without its newline is redone. A reader keeps such a line when it reads:
    it cannot be told from a whole line of a file that lacks its last newline.
    """
    if len(fields) != width:
        return True
    return not terminated and (readable is None or not readable(fields))


def read_lines(path: str, what: str = "a result TSV") -> tuple[list[tuple[int, str]], bool]:
    """(1-based line number, line without its newline) for each line, and whether the file ends in a newline."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(path, "no such file") from None
    except IsADirectoryError:
        raise UserError(path, "is a directory, not a TSV file") from None
    except UnicodeDecodeError:
        raise UserError(path, f"is not a UTF-8 text file; expected {what}") from None
    except OSError as e:
        raise UserError(path, f"cannot be read: {e.strerror}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise UserError(path, f"is empty; expected {what}")
    return [(n + 1, line.rstrip("\r")) for n, line in enumerate(lines)], text.endswith("\n")


def kind_of(path: str) -> Schema | None:
    """The schema a jaxsmooth file's settings name (program and mode); None for other or unreadable files."""
    found = sidecar.program_of(path)
    if found is None:
        return None
    program, settings = found
    return next((s for s in SCHEMAS.values() if s.matches(program, settings.get("mode"))), None)


def read(path: str, accept: Sequence[Schema], label: str | None = None) -> Table:
    """Reads one result file of a kind among `accept` (module docstring); `label` defaults to `Schema.label`."""
    what = " or ".join(s.what for s in accept)
    lines, terminated = read_lines(path, what)
    program, settings = sidecar.read_settings(path)
    body = [(n, line) for n, line in lines if line.strip() and not line.startswith("#")]
    header = body[0][1].split("\t") if body else []
    schema = _schema_of(path, program, settings, header, accept)
    if not body:
        raise UserError(path, f"has no header row ({' '.join(schema.required[:3])} ...); is it {schema.what}?")
    _check_header(path, schema, header)
    rows = [(n, line.split("\t")) for n, line in body[1:] if line != body[0][1]]  # a header repeated on resume
    ignored = None
    if rows and is_cut(rows[-1][1], len(header), terminated or rows[-1][0] != lines[-1][0],
                       lambda fields: _reads(schema, header, fields)):
        ignored = rows.pop()[0]
    if not rows:
        raise UserError(path, "has a header but no rows yet; nothing to analyse")
    columns = _columns(path, schema, header, rows)
    numbers = [n for n, _ in rows]
    _check_values(path, schema, numbers, columns)
    if schema.check is not None:
        schema.check(path, settings, numbers, columns)
    _check_unique(path, schema, numbers, columns)
    return Table(path=path, label=schema.label(settings, path) if label is None else label, schema=schema,
                 settings=settings, columns=columns, ignored_line=ignored)


def _schema_of(path: str, program: str | None, settings: dict, header: list[str], accept: Sequence[Schema]) -> Schema:
    """The schema among `accept` of a file with these settings; a file naming no mode is told by its header."""
    foreign = [s for s in accept if s.foreign]
    ours = {s.program for s in foreign}
    mode = settings.get("mode")
    if foreign and mode is None and (program is None or program in ours):
        # locuslab/smoothing's files (its certify.py writes a radius, its predict.py none), and ours from before
        # the mode was recorded
        return next((s for s in foreign if set(s.required) <= set(header)), foreign[0])
    found = next((s for s in accept if s.matches(program, mode)), None)
    if found is not None:
        return found
    if program in ours:
        raise UserError(path, f"mode {mode!r} in the header is unknown; analyze reads: "
                              f"{', '.join(str(s.mode) for s in accept)}")
    if foreign:
        raise UserError(path, f"was written by jaxsmooth {program}, not {foreign[0].program}; analyze reads "
                              f"{' and '.join(str(s.mode) for s in foreign)} TSVs")
    first = accept[0]
    with_mode = f' with "mode": "{first.mode}"' if first.mode else ""
    raise UserError(path, f"has no jaxsmooth {first.program} settings{with_mode} ({sidecar.path_of(path)}); "
                          f"is it {first.what}?")


def _check_header(path: str, schema: Schema, header: list[str]) -> None:
    required = " ".join(schema.required) + (" [...]" if len(schema.required) < len(schema.columns) else "")
    if len(header) == 1 and " " in header[0]:
        raise UserError(path, f"the header {header[0]!r} has no tabs; {schema.what}'s columns are tab-separated: "
                              f"{required}")
    for name in schema.wanted(header):
        if name not in header:
            raise UserError(path, f"missing column {name!r}: {schema.what} has the tab-separated columns {required}; "
                                  f"this header has {' '.join(header)!r}")
    for name in header:
        if header.count(name) > 1:
            raise UserError(path, f"column {name!r} appears {header.count(name)} times in the header")


def _type(schema: Schema, name: str) -> str:
    column = schema.column(name)
    return STR if column is None else column.type


def _reads(schema: Schema, header: list[str], fields: list[str]) -> bool:
    try:
        for name, text in zip(header, fields):
            PARSE[_type(schema, name)](text)
        return True
    except ValueError:
        return False


def _columns(path: str, schema: Schema, header: list[str], rows) -> dict[str, np.ndarray]:
    """name -> [N] typed array of the rows [(line number, fields)]; a bad field is an error naming its line."""
    values: dict[str, list] = {name: [] for name in header}
    for n, fields in rows:
        if len(fields) != len(header):
            raise UserError(f"{path}:{n}", f"has {len(fields)} tab-separated fields, the header has {len(header)}")
        for name, text in zip(header, fields):
            kind = _type(schema, name)
            try:
                values[name].append(PARSE[kind](text))
            except ValueError:
                raise UserError(f"{path}:{n}", f"column {name}: {text!r} is not {NOT_A[kind]}") from None
    return {name: np.asarray(v, DTYPE[_type(schema, name)]) for name, v in values.items()}


def _check_values(path: str, schema: Schema, lines: list[int], columns: dict) -> None:
    """Each column's refused values (`Column.check`): what the analyses assume (0/1, radii >= 0, ...)."""
    for column in schema.columns:
        if column.check is None or column.name not in columns:
            continue
        values = columns[column.name]
        bad = column.check.bad(values)
        if np.any(bad):
            i = int(np.argmax(bad))
            shown = repr(str(values[i])) if column.type == STR else values[i]
            raise UserError(f"{path}:{lines[i]}", f"column {column.name}: {shown} {column.check.what}")


def _check_unique(path: str, schema: Schema, lines: list[int], columns: dict) -> None:
    """Each row's `Schema.unique` values once in the file: each example is counted once (per radius, ...)."""
    if not schema.unique:
        return
    keys = zip(*(columns[name].tolist() for name in schema.unique))
    seen: dict[tuple, int] = {}
    for n, key in zip(lines, keys):
        if key in seen:
            where = "".join(f" at {name} {value}" for name, value in zip(schema.unique[1:], key[1:]))
            per = f" per {' and '.join(schema.unique[1:])}" if len(schema.unique) > 1 else ""
            raise UserError(f"{path}:{n}", f"idx {key[0]}{where} is already on line {seen[key]}; "
                                           f"each example is counted once{per}")
        seen[key] = n
