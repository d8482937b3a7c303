"""A real single-node Slurm for the tests (started once per session) and ``sbatch --wait``
under a timeout.

The tests run when this machine can host the daemons: root, and slurm-wlm + munge
installed or installable with apt-get (``slurm/testing/cluster.py`` installs them).
Otherwise every test here is skipped with the reason. ``MPISGD_SLURM_TESTS=0`` skips them;
``MPISGD_SLURM_TESTS=1`` turns every skip into a failure (for CI machines that must run them).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = ROOT / "slurm"


def _cluster_module():
    spec = importlib.util.spec_from_file_location("mpisgd_slurm_cluster",
                                                  SLURM_DIR / "testing" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _skip(reason: str):
    if os.environ.get("MPISGD_SLURM_TESTS") == "1":
        pytest.fail(f"MPISGD_SLURM_TESTS=1 but: {reason}", pytrace=False)
    pytest.skip(f"Slurm tests skipped: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's test cluster: started on first use, stopped at the end of the session."""
    if os.environ.get("MPISGD_SLURM_TESTS") == "0":
        pytest.skip("Slurm tests skipped: MPISGD_SLURM_TESTS=0")
    if not sys.platform.startswith("linux"):
        _skip("slurmd and slurmctld need Linux")
    if os.geteuid() != 0:
        _skip("starting munged, slurmctld and slurmd needs root (run `make test-slurm` as "
              "root, e.g. in a container)")
    cluster_mod = _cluster_module()
    try:
        cluster_mod.ensure_packages(log=lambda msg: print(msg, file=sys.stderr))
    except (cluster_mod.ClusterError, subprocess.TimeoutExpired, OSError) as exc:
        _skip(f"slurm-wlm and munge are not installed and could not be installed: {exc}")
    cluster = cluster_mod.Cluster(Path(tempfile.mkdtemp(prefix="mpisgd-slurm-")))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.dir, ignore_errors=True)


@dataclass
class Job:
    id: str
    returncode: int
    seconds: float
    log: str           # the job's output file(s), concatenated
    submit_dir: Path

    def run(self, tag: str | None = None) -> Path:
        return self.submit_dir / "runs" / f"slurm-{tag or self.id}"


class Submitter:
    """``sbatch --wait`` of a script in slurm/, from a submit folder, under a hard timeout."""

    def __init__(self, cluster, env: dict[str, str]):
        self.cluster = cluster
        self.env = env

    def env_for(self, extra: dict[str, str] | None) -> dict[str, str]:
        return self.cluster.env(dict(self.env, **(extra or {})))

    def start(self, script: str, sbatch_opts: list[str], args: list[str], submit_dir: Path,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """Start ``sbatch --wait``; returns the process and the file its job id goes to."""
        submit_dir.mkdir(parents=True, exist_ok=True)
        id_file = submit_dir / f".sbatch-{time.monotonic_ns()}"
        cmd = ["sbatch", "--wait", "--parsable", *sbatch_opts, str(SLURM_DIR / script), *args]
        with open(id_file, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                    env=self.env_for(env), cwd=str(submit_dir),
                                    start_new_session=True)
        return proc, id_file

    @staticmethod
    def job_id(id_file: Path, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = id_file.read_text().split("\n", 1)[0].strip()
            if first.split(";")[0].isdigit():
                return first.split(";")[0]
            time.sleep(0.1)
        raise AssertionError(f"sbatch printed no job id: {id_file.read_text()!r}")

    def cancel(self, proc: subprocess.Popen, id_file: Path) -> None:
        """scancel the job (if it got an id) and end ``sbatch --wait``: for failing tests."""
        first = id_file.read_text().split("\n", 1)[0].split(";")[0].strip()
        if first.isdigit():
            self.cluster.run("scancel", "--full", first, check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def finish(self, proc: subprocess.Popen, id_file: Path, submit_dir: Path, t0: float,
               timeout: float) -> Job:
        try:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            job_id = self.job_id(id_file, 1)
            self.cluster.run("scancel", "--full", job_id, check=False)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"sbatch --wait of job {job_id} timed out after {timeout} s\n"
                        f"{self.cluster.run('squeue', check=False).stdout}\n"
                        f"{job_logs(submit_dir)}\n{self.cluster.logs()}")
        seconds = time.monotonic() - t0
        return Job(self.job_id(id_file, 1), proc.returncode, seconds, job_logs(submit_dir),
                   submit_dir)

    def __call__(self, script: str, sbatch_opts: list[str], args: list[str], submit_dir: Path,
                 *, env: dict[str, str] | None = None, timeout: float = 150) -> Job:
        t0 = time.monotonic()
        proc, id_file = self.start(script, sbatch_opts, args, submit_dir, env)
        return self.finish(proc, id_file, submit_dir, t0, timeout)


def job_logs(submit_dir: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')}"
                     for f in sorted(submit_dir.glob("*.out")))


@pytest.fixture(scope="session")
def sbatch(slurm_cluster, session_cache, tmp_path_factory) -> Submitter:
    """Submits slurm/ scripts with the environment a user would have: mpisgd's Python first
    on PATH, the repository on PYTHONPATH, the session's data and numba caches."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPISGD_PYTHON"] = sys.executable
    env["MPISGD_CACHE"] = str(session_cache)
    # The same numba cache as the `launch` fixture's runs, so the kernels compile once.
    env["MPISGD_NUMBA_CACHE"] = str(session_cache / "numba" / socket.gethostname())
    env["TMPDIR"] = str(tmp_path_factory.mktemp("node-tmp"))
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if os.geteuid() == 0:   # Open MPI's mpirun refuses root without these (MPICH ignores them)
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # The test node claims 8 CPUs on a machine that may have 2 cores: Open MPI's mpirun
    # inside the allocation would bind 8 ranks to 2 cores and refuse ("binding more
    # processes than cpus"). A real node has the cores it claims.
    env.setdefault("PRTE_MCA_hwloc_default_binding_policy", "none")   # Open MPI 5
    env.setdefault("OMPI_MCA_hwloc_base_binding_policy", "none")      # Open MPI 4
    return Submitter(slurm_cluster, env)
