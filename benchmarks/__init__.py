"""mpisgd benchmarks: speed and memory goals, measured (never asserted in unit tests)."""
