"""Communicators, topology and error agreement; everything that talks MPI lives here."""

from mpisgd.comm.world import (Topology, agree, agreed_call, abort_job, bcast_value,
    make_topology, rank_tag)

__all__ = ["Topology", "agree", "agreed_call", "abort_job", "bcast_value",
           "make_topology", "rank_tag"]
