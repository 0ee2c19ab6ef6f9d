"""The result files: each kind defined once, one writer, one reader, one table.

Every TSV jaxsmooth writes (certify, predict, distributional, attack,
attack accuracy) is a plain table, the column header then one row per
line, its settings in the sidecar ``FILE.tsv.json`` (`sidecar`). A kind is
a `Schema` (`files`: `CERTIFY`, `PREDICT`, `DISTRIBUTIONAL`, `ATTACK`,
`ACCURACY`): its program and mode, its columns with their types and the
values a reader refuses, the settings a resumed file must keep, its notes.

    writer = results.Writer("cert.tsv", results.CERTIFY, settings, columns)   # resumes after the last row
    writer.write(results.CERTIFY.row(outcome))                                 # an `Outcome` -> its row
    table = results.read("cert.tsv", [results.CERTIFY, results.PREDICT])      # a `Table` of typed columns

NumPy and the standard library only: analysis reads results without JAX.
"""

from jaxsmooth.results import sidecar
from jaxsmooth.results.files import (ACCURACY, ALPHA_NOTE, ATTACK, ATTACKS, CERTIFY, DISTRIBUTIONAL, KINDS, PREDICT,
                                     SCHEMAS, Outcome)
from jaxsmooth.results.schema import FLOAT, INT, STR, TIME, Check, Column, Schema, model_label, seconds, stem_label
from jaxsmooth.results.table import Table, is_cut, kind_of, read, read_lines
from jaxsmooth.results.writer import Writer

__all__ = [
    "ACCURACY", "ALPHA_NOTE", "ATTACK", "ATTACKS", "CERTIFY", "Check", "Column", "DISTRIBUTIONAL", "FLOAT", "INT",
    "KINDS", "Outcome", "PREDICT", "SCHEMAS", "STR", "Schema", "TIME", "Table", "Writer", "is_cut", "kind_of",
    "model_label", "read", "read_lines", "seconds", "sidecar", "stem_label",
]
