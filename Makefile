# Two commands on a fresh machine: `make run` and `make test`.
#   make run [NP=8] [JOB=jobs/logreg.toml] [ARGS="--set train.epochs=3"]
#   make test                 the whole suite (unit, MPI collectives, launch tests)
#   make test-quick           the inner loop: unit tests and one launch per mode (~2 min)
#   make lint                 ruff (style, import order, unused code); the import layers
#                             are a unit test (tests/unit/test_layers.py)
#   make soak                 the default job 20x at 8 ranks in each mode (~15 min)
#   make test-slurm           the Slurm tests alone (a real single-node Slurm; needs root)
#   make slurm-up / slurm-down  start / stop that test cluster by hand
#   make bench                benchmarks/ (writes benchmarks/results/)
#   make MPI=site ...         use the cluster's MPI: builds mpi4py against its mpicc
PYTHON ?= python3
VENV   ?= .venv
NP     ?= 8
JOB    ?=
ARGS   ?=
MPI    ?= pip
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(MPI)

ifeq ($(MPI),site)
  EXTRAS  = test
  MPIEXEC = mpiexec
else
  EXTRAS  = mpich,test
  MPIEXEC = $(VENV)/bin/mpiexec
endif

.PHONY: run test test-quick lint soak test-slurm slurm-up slurm-down install bench clean
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(MPI),site)
	env MPICC=$${MPICC:-mpicc} $(PY) -m pip install -q --no-binary=mpi4py --no-cache-dir mpi4py
endif
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(MPIEXEC) -n $(NP) $(PY) -m mpisgd $(JOB) $(ARGS)

test test-quick soak: export MPISGD_CACHE ?= $(CURDIR)/.cache/mpisgd
test: install
	$(PY) -m pytest -q

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
