"""The environment a rank sets before MPI and NumPy start (mpisgd.runtime.launch_env)."""

from __future__ import annotations

import os

import pytest

from mpisgd.runtime import launch_env

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
