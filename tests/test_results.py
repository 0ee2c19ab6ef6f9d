"""jaxsmooth.results: one schema per result file; a column added to it is written by both certify paths, read back."""

import datetime
import math
import os

import jax
import numpy as np
import pytest

import jaxsmooth
from jaxsmooth import analysis, analyze, certify, results
from jaxsmooth.errors import UserError

from helpers import tsv_rows

FAST = dict(skip=20, max=100, n0=20, n=300, alpha=0.01, batch=100, inputs=5, no_progress=True)


@pytest.fixture
def margin(monkeypatch):
    """CERTIFY with one more column, count_A - count_B, for the test's duration (monkeypatch restores it)."""
    column = results.Column("margin", results.INT, lambda o: o.count_a - o.count_b)
    monkeypatch.setattr(results.CERTIFY, "columns", results.CERTIFY.columns + (column,))
    return column


def _dicts(path):
    header, rows = tsv_rows(path)
    return header, [dict(zip(header, r)) for r in rows]


@pytest.mark.slow
def test_a_column_added_to_the_schema_is_written_by_both_certify_paths_and_read_back(small_model, tmp_path, capsys,
                                                                                   margin, monkeypatch):
    fixed, sequential = tmp_path / "fixed.tsv", tmp_path / "sequential.tsv"
    assert certify.write(checkpoint=small_model, out=str(fixed), **FAST) == 0
    assert certify.write(checkpoint=small_model, out=str(sequential), sequential=True, radii=[0.25, 0.5], **FAST) == 0
    for path, last in ((fixed, "lbound_model"), (sequential, "n_used")):
        header, rows = _dicts(path)
        assert header[-2:] == [last, "margin"]  # the schema's order: the new column last
        assert sorted(int(r["idx"]) for r in rows) == list(range(0, 100, 20))  # sequential: as inputs finish
        for r in rows:
            assert int(r["margin"]) == int(r["count_A"]) - int(r["count_B"])
        run = analysis.read_run(str(path))
        assert run.columns["margin"].dtype == np.int64
        np.testing.assert_array_equal(run.columns["margin"], run.columns["count_A"] - run.columns["count_B"])
    assert {int(r["n_used"]) for r in _dicts(sequential)[1]} <= set(range(21, 321))  # stopped within the budget
    capsys.readouterr()
    assert analyze.main([str(fixed), str(sequential), "--radii", "0,0.25"]) == 0
    assert "| fixed | 5 |" in capsys.readouterr().out
    monkeypatch.undo()  # the schema as it was: a file with the column no longer matches it
    assert "margin" not in results.CERTIFY.header({"label", "softmax", "clean"})
    with pytest.raises(UserError, match="has columns"):
        results.Writer(str(fixed), results.CERTIFY, results.read(str(fixed), [results.CERTIFY]).settings,
                       results.CERTIFY.header({"label", "softmax", "clean"}), enabled=False)


def _linear(params, x):
    return x.reshape(len(x), -1) @ params


@pytest.mark.slow
def test_the_api_rows_of_both_paths_have_the_added_column(margin):
    x = np.asarray(jax.random.uniform(jax.random.key(0), (4, 2, 2, 1)))
    params = np.asarray(jax.random.normal(jax.random.key(1), (4, 3)))
    kwargs = dict(sigma=0.25, n0=20, n=400, alpha=0.01, labels=[0, 1, 2, 0], batch=100, noise="gaussian")
    for rows in (jaxsmooth.api.certify(_linear, params, x, **kwargs),
                 jaxsmooth.api.certify(_linear, params, x, sequential=True, **kwargs)):
        assert [r["margin"] for r in rows] == [r["count_A"] - r["count_B"] for r in rows]
        assert all(isinstance(r["margin"], int) for r in rows)


def _row(schema, i):
    """Row i of a file of `schema`: every column filled with a value of its type."""
    value = {results.INT: i, results.FLOAT: 0.5 + i, results.TIME: str(datetime.timedelta(seconds=1.5 + i)),
             results.STR: "x"}
    row = {c.name: value[c.type] for c in schema.columns}
    fixes = {"kind": results.KINDS[i % 2], "gamma": 1.0, "predict": 1, "correct": 1, "topk_correct": 1,
             "success": 1, "correct_noisy": 0, "distance": 0.5 + i}
    return {**row, **{k: v for k, v in fixes.items() if k in row}}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SETTINGS = {"mode": None, "attack": "pgd", "gammas": [1.0], "gamma_adv": [], "checkpoint": "runs/m1"}


@pytest.mark.parametrize("kind", sorted(results.SCHEMAS))
def test_every_kind_round_trips_through_its_writer_and_the_one_reader(tmp_path, kind):
    """Each schema's file, written by `Writer`, reads back as a `Table` of that schema, every column typed."""
    schema = results.SCHEMAS[kind]
    path = str(tmp_path / f"{kind}.tsv")
    settings = {**SETTINGS, "mode": schema.mode}
    writer = results.Writer(path, schema, settings, schema.header(["label", "softmax", "clean", "topk",
                                                                  "anisotropic", "sequential"]))
    rows = [_row(schema, i) for i in range(2)]
    for row in rows:
        writer.write(row)
    writer.close()
    assert results.kind_of(path) is schema
    # the settings are as readable as the table: the sidecar gets the TSV's mode (not a temporary file's 0600)
    assert os.stat(f"{path}.json").st_mode & 0o777 == os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
    table = results.read(path, [schema])
    assert table.schema is schema and table.settings == settings and table.ignored_line is None
    for column in schema.columns:
        got = table.columns[column.name]
        want = [r[column.name] for r in rows]
        if column.type == results.TIME:
            np.testing.assert_allclose(got, [1.5, 2.5])
        else:
            assert np.issubdtype(got.dtype, results.schema.DTYPE[column.type]) and got.tolist() == want, column.name
    with open(path, "a") as f:  # a killed job's cut row: left out by the reader, redone by the writer
        f.write("7\t")
    assert results.read(path, [schema]).ignored_line == 4
    assert results.Writer(path, schema, settings, list(table.columns), enabled=False).done == [0, 1]


@pytest.mark.parametrize("fields, terminated, readable, cut", [
    (["1", "2"], True, None, False),
    (["1"], True, None, True),            # too few fields, even with its newline
    (["1", "2"], False, None, True),      # the writer: any line without its newline is redone
    (["1", "2"], False, True, False),     # a reader: it reads, so it cannot be told from a whole line
    (["1", "2."], False, False, True),    # a reader: it does not read
])
def test_the_cut_line_rule(fields, terminated, readable, cut):
    reads = None if readable is None else (lambda f: readable)
    assert results.is_cut(fields, 2, terminated, reads) is cut


def test_a_file_of_another_kind_is_refused_naming_what_it_is(tmp_path):
    path = str(tmp_path / "a.tsv")
    writer = results.Writer(path, results.ATTACK, {"attack": "pgd"})
    writer.write({"idx": 0, "label": 1, "predict": 1, "success": 0, "distance": math.inf, "time": "0:00:01"})
    writer.close()
    with pytest.raises(UserError, match="was written by jaxsmooth attack, not certify"):
        analysis.read_run(path)
    with pytest.raises(UserError, match="has no jaxsmooth attack-accuracy settings"):
        results.read(path, [results.ACCURACY])
    with pytest.raises(UserError, match="choose another --out"):
        results.Writer(path, results.CERTIFY, {"mode": "certify"})
    assert analysis.read_attack(path).label == "a"  # no checkpoint in the settings: the file stem
