"""The environment a rank sets before MPI and NumPy start (mpisgd.runtime.launch_env).

No launcher is started here (the launchers' names and variables are stand-ins), so no
timeout is needed."""

from __future__ import annotations

import os

import pytest

from mpisgd.data import format as fmt
from mpisgd.runtime import launch_env, supervise

VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE",
        "MPISGD_YIELD", "OMPI_MCA_mpi_yield_when_idle", "MPIR_CVAR_ENABLE_HEAVY_YIELD",
        *launch_env.BLAS_THREAD_VARS)


@pytest.fixture
def env(monkeypatch):
    for var in VARS:   # set, then deleted: monkeypatch restores each at the end
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setattr(launch_env, "cores_here", lambda: 2)
    return monkeypatch


def test_eight_ranks_on_two_cores_yield_and_use_one_blas_thread_each(env):
    env.setenv("MPI_LOCALNRANKS", "8")
    assert launch_env.tune_for_oversubscription() is True
    assert os.environ["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert all(os.environ[v] == "1" for v in launch_env.BLAS_THREAD_VARS)
    assert "MPIR_CVAR_ENABLE_HEAVY_YIELD" not in os.environ


def test_one_rank_keeps_its_cores_and_a_users_setting_wins(env):
    env.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "1")
    env.setenv("OPENBLAS_NUM_THREADS", "3")
    assert launch_env.tune_for_oversubscription() is False
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"      # the user's
    assert os.environ["MKL_NUM_THREADS"] == "2"           # cores / ranks
    assert "OMPI_MCA_mpi_yield_when_idle" not in os.environ


def test_no_launcher_sets_nothing(env):
    assert launch_env.tune_for_oversubscription() is False
    assert not any(v in os.environ for v in launch_env.BLAS_THREAD_VARS)


# --------------------------------------------------------------------------------------
# The rank, from whichever launcher started the process

@pytest.fixture
def no_rank(monkeypatch):
    for var in launch_env.RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("var", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                                 "SLURM_PROCID"])
def test_each_launchers_rank_variable_is_read(no_rank, var):
    assert launch_env.launcher_rank() is None
    no_rank.setenv(var, "3")
    assert launch_env.launcher_rank() == "3"


def test_the_mpi_launchers_rank_wins_over_the_batch_steps_task(no_rank):
    # mpirun inside an sbatch script: every rank inherits the batch step's SLURM_PROCID=0.
    no_rank.setenv("SLURM_PROCID", "0")
    no_rank.setenv("OMPI_COMM_WORLD_RANK", "5")
    no_rank.setenv("PMIX_RANK", "5")
    assert launch_env.launcher_rank() == "5"
    assert launch_env.launcher_rank({"PMI_RANK": "2", "SLURM_PROCID": "0"}) == "2"
    assert launch_env.launcher_rank({}) is None


def test_the_supervisor_and_the_test_hook_read_the_same_rank(no_rank, tmp_path):
    assert supervise.launcher_rank is launch_env.launcher_rank
    no_rank.setenv("MPISGD_TEST_HIDE", "2:hidden.h5")
    path = str(tmp_path / "hidden.h5")
    fmt._hidden_here(path)                       # no launcher: rank 0, not hidden
    no_rank.setenv("OMPI_COMM_WORLD_RANK", "2")  # Open MPI's rank 2: hidden
    with pytest.raises(FileNotFoundError):
        fmt._hidden_here(path)
    no_rank.setenv("OMPI_COMM_WORLD_RANK", "1")
    fmt._hidden_here(path)
    fmt._hidden_here(str(tmp_path / "other.h5"))
