"""What a result file is: its columns, their types and checks, its identity settings; `Column` and `Schema`.

A `Schema` describes one kind of TSV (`jaxsmooth.results.files` holds the
five): the program that writes it (the sidecar's ``program``), the
``mode`` in its settings where one program writes several kinds, its
columns in order, the settings that make a resumed file refuse new rows,
its notes and how many rows an example has. Its `Column`s say how a
reader types each field and which values it refuses; those of certify and
predict files also say how a row's value is computed from an `Outcome`
and under which feature the column is present. NumPy and the standard
library only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

# Column types: how a field's text reads and the array it makes.
INT, FLOAT, STR, TIME = "int", "float", "str", "time"

_TIMEDELTA = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?$")
STEM_EXTENSIONS = (".tsv", ".txt", ".tab")  # locuslab names files "sigma_0.25": keep ".25"


def seconds(text: str) -> float:
    """Seconds of a Python ``str(datetime.timedelta)`` (``[D day[s], ]H:MM:SS[.ffffff]``) or plain seconds (``15.4``).

    locuslab/smoothing's certify.py has written both over its history.
    """
    if _PLAIN_SECONDS.match(text.strip()):
        return float(text)
    match = _TIMEDELTA.match(text.strip())
    if not match:
        raise ValueError(text)
    days, hours, minutes, secs = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs)


PARSE = {INT: int, FLOAT: float, STR: str, TIME: seconds}
DTYPE = {INT: np.int64, FLOAT: np.float64, STR: str, TIME: np.float64}  # time: seconds
NOT_A = {INT: "an integer", FLOAT: "a number", STR: "text", TIME: "a time H:MM:SS[.ffffff] or seconds"}


class Check(NamedTuple):
    """Values a reader refuses: ``bad(values [N]) -> [N] bool``, and what such a value is not."""

    bad: Callable[[np.ndarray], np.ndarray]
    what: str


BINARY = Check(lambda v: (v != 0) & (v != 1), "is not 0 or 1")
RADIUS = Check(lambda v: np.isnan(v) | (v < 0), "is not a radius >= 0")
FINITE_RADIUS = Check(lambda v: ~np.isfinite(v) | (v < 0), "is not a radius >= 0")
DISTANCE = Check(lambda v: np.isnan(v) | (v < 0), "is not a distance >= 0")  # inf: the attack failed
CLASS = Check(lambda v: v < -1, "is not a class or -1 (abstain)")


def one_of(allowed: tuple[str, ...]) -> Check:
    return Check(lambda v: ~np.isin(v, allowed), f"is not one of {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a result file.

    Attributes:
      name: its header name.
      type: INT, FLOAT, STR or TIME (a ``str(datetime.timedelta)``, read as seconds).
      value: ``value(outcome) -> the field`` for certify and predict rows (`Schema.row`); None where
        another program builds the rows (attack, distributional).
      when: the feature under which the column is present (`Outcome.features`; None: always). A
        reader wants all the columns of a feature once it sees one of them.
      required: a reader refuses a file without it.
      check: the values a reader refuses, or None.
    """

    name: str
    type: str
    value: Callable[[Any], Any] | None = None
    when: str | None = None
    required: bool = False
    check: Check | None = None


def stem_label(settings: dict, path: str) -> str:
    """A file's name in tables and legends: its stem (``sigma_0.25.tsv`` -> ``sigma_0.25``; ``sigma_0.25`` kept)."""
    stem, ext = os.path.splitext(os.path.basename(path))
    return stem if ext in STEM_EXTENSIONS else os.path.basename(path)


def model_label(settings: dict, path: str) -> str:
    """The name of the model a file is about: its settings' checkpoint base name, else the file stem."""
    checkpoint = settings.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint.strip("/"):
        return os.path.basename(os.path.normpath(checkpoint))
    return stem_label(settings, path)


@dataclasses.dataclass(eq=False)  # not frozen: a test may add a column for a while (and every user sees it)
class Schema:
    """One kind of result file, written by `Writer` and read by `read`.

    Attributes:
      kind: its name (``certify``, ``predict``, ``distributional``, ``attack``, ``attack-accuracy``).
      program: the sidecar's ``program``.
      mode: the settings' ``mode`` that tells it from the program's other files; None where the
        program writes one kind.
      what: how messages name it (``a certify TSV``).
      columns: in file order.
      identity: the settings whose change makes a resumed file refuse new rows (`Writer`).
      defaults: what files written before an identity field existed used for it.
      notes: the sidecar's notes.
      unique: the columns whose values a row has alone in its file (each example once; per radius...).
      rows_per_example: ``rows_per_example(settings) -> int`` (distributional: one row per gamma).
      check: ``check(path, settings, lines [N], columns)``: what a reader refuses beyond single columns.
      label: ``label(settings, path) -> str``: a file's default name in tables.
      foreign: it reads files without jaxsmooth settings (locuslab/smoothing's), their mode told by
        their header.
    """

    kind: str
    program: str
    mode: str | None
    what: str
    columns: tuple[Column, ...]
    identity: tuple[str, ...] = ()
    defaults: dict = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    unique: tuple[str, ...] = ("idx",)
    rows_per_example: Callable[[dict], int] = lambda settings: 1
    check: Callable | None = None
    label: Callable[[dict, str], str] = stem_label
    foreign: bool = False

    def header(self, features: Iterable[str] = ()) -> list[str]:
        """The column names of a file whose rows have `features` (`Outcome.features`), in order."""
        features = set(features)
        return [c.name for c in self.columns if c.when is None or c.when in features]

    def row(self, outcome) -> dict[str, Any]:
        """The row of one `Outcome`: column name -> value, for the columns its features make present."""
        features = outcome.features
        return {c.name: c.value(outcome) for c in self.columns if c.when is None or c.when in features}

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def wanted(self, header: list[str]) -> list[str]:
        """The columns a file with `header` must have: the required ones, and every column of a feature it has."""
        features = {c.when for c in self.columns if c.when is not None and c.name in header}
        return self.required + [c.name for c in self.columns if c.when in features and not c.required]

    def matches(self, program: str | None, mode: str | None) -> bool:
        """Whether a file whose settings name `program` and `mode` is of this kind."""
        return program == self.program and (self.mode is None or mode == self.mode)
