"""Training modes: how ranks combine gradients (allreduce now; parameter server later)."""
