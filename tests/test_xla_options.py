"""The sampler's XLA:CPU option sets: the same counts under each, and certify resumes with the set it chose.

`Sampler(compiler_options="auto")` times `compilation.AUTO_CANDIDATES` and keeps
the fastest. The sets fuse differently, so logits can differ in their last
bits and an argmax within rounding of a tie could go either way; a certify
TSV therefore records the set in its settings (``xla_options``) and a resumed
job samples with it again.
"""

import json
import os

import numpy as np
import pytest

from jaxsmooth import certify, compilation

from conftest import ROOT
from helpers import sidecar_settings, spy_compile_fastest, tsv_rows

QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
SMALL = ["--config.model.width=4", "--config.train.batch_size=64", "--config.train.eval_batch_size=120"]


def _set_options_and_keep(path, options, rows: int):
    """Writes `options` as the file's xla_options (in its sidecar FILE.tsv.json) and keeps its first `rows` rows."""
    with open(f"{path}.json") as f:
        record = json.load(f)
    record["settings"]["xla_options"] = options
    with open(f"{path}.json", "w") as f:
        json.dump(record, f)
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "w") as f:
        f.writelines(lines[:1 + rows])


@pytest.mark.slow
def test_certify_records_the_chosen_options_and_resumes_with_them(untrained_model, tmp_path, monkeypatch):
    calls = spy_compile_fastest(monkeypatch)
    out = str(tmp_path / "cert.tsv")
    argv = ["--config", QUICKSTART, "--checkpoint", untrained_model, "--out", out, "--n0", "20", "--n", "400",
            "--max", "4", "--batch", "200", "--no-progress"] + SMALL
    assert certify.main(argv) == 0
    assert calls == [None]  # a new file: "auto" times the candidates
    chosen = sidecar_settings(out, "certify")["xla_options"]
    assert chosen in [dict(o) for o in compilation.AUTO_CANDIDATES]
    header, first = tsv_rows(out)

    calls.clear()
    other = next(dict(o) for o in compilation.AUTO_CANDIDATES if dict(o) != chosen)
    _set_options_and_keep(out, other, rows=1)  # as if the first job had picked the other set
    assert certify.main(argv) == 0
    assert calls == [[other]]  # compiled with the recorded set only: no timing, no other choice
    _, resumed = tsv_rows(out)
    # examples 2-4 sampled again under the other set: the counts and everything computed from them are the
    # same, the bound from the mean softmax the same to rounding
    exact = [header.index(c) for c in ("idx", "label", "predict", "radius", "correct", "pA_lower", "count_A",
                                       "count_B")]
    assert [[r[i] for i in exact] for r in resumed] == [[r[i] for i in exact] for r in first]
    lbound = header.index("lbound_mc")
    np.testing.assert_allclose([float(r[lbound]) for r in resumed], [float(r[lbound]) for r in first], rtol=1e-5)
