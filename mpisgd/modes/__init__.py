"""Training modes: how ranks combine gradients: allreduce (and local, its one-rank
case) and the parameter server (modes.ps)."""
