"""Certify, predict and attack of the quick-start workdir on 1, 3 and 6 devices: the same rows.

The quick-start run trained with ``train.batch_size = 64``, which 3 and 6
devices do not divide. Certification and attacks read the model through the
one loader and never the training config, so they run on any device count;
the noise of an example depends on the key and its index only, so the counts
are the same on every count.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from helpers import tsv_rows

# Runs in a fresh process with D fake CPU devices: the three jobs through their Python entries.
SCRIPT = """
import json, sys
import jax
from jaxsmooth import attack, certify
workdir, folder = sys.argv[1], sys.argv[2]
common = dict(checkpoint=workdir, skip=60, max=360, no_progress=True)
certify.write(out=f"{folder}/certify.tsv", n0=20, n=300, alpha=0.01, batch=60, inputs=2, **common)
certify.write(out=f"{folder}/predict.tsv", mode="predict", n=300, alpha=0.01, batch=60, **common)
attack.write(out=f"{folder}/attack.tsv", attack="pgd", steps=3, rounds=2, batch=4, **common)
print(json.dumps({"devices": jax.device_count()}))
"""


def _jobs_on(devices: int, workdir: str, folder) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, workdir, str(folder)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"devices": devices}
    rows = {}
    for name in ("certify", "predict", "attack"):
        header, body = tsv_rows(folder / f"{name}.tsv")
        keep = [j for j, column in enumerate(header) if column != "time"]
        rows[name] = ([header[j] for j in keep], [[r[j] for j in keep] for r in body])
        with open(folder / f"{name}.tsv.json") as f:
            settings = json.load(f)["settings"]
        assert settings.get("devices") == devices
    return rows


@pytest.mark.slow
def test_certify_predict_and_attack_give_the_same_rows_on_1_3_and_6_devices(small_model, tmp_path):
    with open(os.path.join(small_model, "config.json")) as f:
        assert json.load(f)["train"]["batch_size"] % 3 != 0  # the training batch size 3 and 6 do not divide
    results = {}
    for devices in (1, 3, 6):
        folder = tmp_path / f"d{devices}"
        folder.mkdir()
        results[devices] = _jobs_on(devices, small_model, folder)
    for name in ("certify", "predict", "attack"):
        header, rows = results[1][name]
        assert len(rows) == 6 and "idx" in header
        for devices in (3, 6):
            assert results[devices][name][0] == header
            for ours, theirs in zip(results[devices][name][1], rows):
                for column, a, b in zip(header, ours, theirs):
                    if column == "lbound_mc":  # a float32 sum of softmax vectors: its order follows the devices
                        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)
                    else:
                        assert a == b, (name, devices, column, ours[0])
    certify_header, certify_rows = results[1]["certify"]
    counts = [int(r[certify_header.index("count_A")]) + int(r[certify_header.index("count_B")]) for r in certify_rows]
    assert all(0 < c <= 300 for c in counts)  # real counts, not empty rows
