"""Communicators, topology and error agreement; everything that talks MPI lives here."""

from mpisgd.comm.world import Topology, abort_job, agree, agreed_call, bcast_value, make_topology

__all__ = ["Topology", "agree", "agreed_call", "abort_job", "bcast_value",
           "make_topology"]
