"""launch/ scripts: usage without arguments, and the command each hands to its cluster tool (stubbed on PATH)."""

import os
import signal
import stat
import subprocess

import pytest

from conftest import ROOT

LAUNCH = os.path.join(ROOT, "launch")


def _stub(folder, name):
    """A fake `name` that writes its arguments, one per line, to name.args."""
    path = folder / name
    path.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{folder}/{name}.args"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder / f"{name}.args"


@pytest.mark.parametrize("script", ["local.sh", "slurm.sbatch", "tpu_pod.sh"])
def test_without_arguments_each_script_prints_its_usage_and_exits_2(script):
    out = subprocess.run([os.path.join(LAUNCH, script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith("# ") and f"launch/{script} " in out.stderr  # the header, with an example


def test_slurm_runs_the_command_once_per_node_with_srun(tmp_path):
    args = _stub(tmp_path, "srun")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    cmd = ["python", "-m", "jaxsmooth.train", "--config", "configs/x.py", "--workdir", "a dir"]
    out = subprocess.run([os.path.join(LAUNCH, "slurm.sbatch")] + cmd, env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert args.read_text().splitlines() == ["--ntasks-per-node=1", "--kill-on-bad-exit=1"] + cmd


def test_tpu_pod_runs_the_same_command_on_every_worker(tmp_path):
    args = _stub(tmp_path, "gcloud")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", REMOTE_DIR="/opt/js")
    cmd = ["python", "-m", "jaxsmooth.certify", "--out", "a b.tsv", "--config.certify.parallel=examples"]
    out = subprocess.run([os.path.join(LAUNCH, "tpu_pod.sh"), "my-tpu", "us-central2-b"] + cmd, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    got = args.read_text().splitlines()
    assert got[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone", "us-central2-b"]
    assert "--worker=all" in got
    remote = got[got.index("--command") + 1]
    assert remote.startswith("cd /opt/js && JAXSMOOTH_DISTRIBUTED=1 python -m jaxsmooth.certify")
    # the remote shell sees the arguments as given (quoted), e.g. a path with a space
    words = subprocess.run(["bash", "-c", 'printf "%s\\n" ' + remote.split("JAXSMOOTH_DISTRIBUTED=1 ", 1)[1]],
                           capture_output=True, text=True).stdout.splitlines()
    assert words == cmd


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (2, False), (74, False)])
def test_slurm_requeues_a_job_that_stopped_after_saving(tmp_path, status, requeued):
    """Exit status 75 (jaxsmooth.jobs: stopped by SIGTERM after saving) requeues the job; any other is final."""
    (tmp_path / "srun").write_text(f"#!/usr/bin/env bash\nexit {status}\n")
    (tmp_path / "srun").chmod(0o755)
    scontrol = _stub(tmp_path, "scontrol")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
    out = subprocess.run([os.path.join(LAUNCH, "slurm.sbatch"), "python", "-m", "jaxsmooth.train"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == status
    assert (scontrol.read_text().splitlines() if scontrol.exists() else []) == (["requeue", "4242"] if requeued else [])


def test_slurm_script_outlives_a_preemption_signal_to_requeue(tmp_path):
    """SLURM signals the batch script and the job step together: the script waits for the step's 75, then requeues."""
    (tmp_path / "srun").write_text("#!/usr/bin/env bash\ntrap 'exit 75' TERM\necho started\nsleep 30 & wait\n")
    (tmp_path / "srun").chmod(0o755)
    scontrol = _stub(tmp_path, "scontrol")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_ID="7")
    job = subprocess.Popen([os.path.join(LAUNCH, "slurm.sbatch"), "python", "-m", "jaxsmooth.certify"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert job.stdout.readline().strip() == "started"
    os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(timeout=30) == 75
    assert scontrol.read_text().splitlines() == ["requeue", "7"]
    assert "waiting for the job to save" in job.stderr.read()
