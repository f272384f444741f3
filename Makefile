# The two commands of the README: `make demo` runs the whole DAG on the generated demo corpus,
# `make test` runs the test suite. Both set everything up themselves (venv, packages, Debian TTS).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
# CPU runs: one BLAS thread per job; Snakemake runs jobs in parallel instead.
export OMP_NUM_THREADS ?= 1
CORES ?= all

.PHONY: demo test test-fast setup system-deps test-deps lint dag clean rehearsal-plan rehearsal

# The stamp below skips the install once done; the drift check runs every time (a package upgraded by hand would
# make this machine format, lint or compute differently from a fresh clone).
# No root and no system package: what a cluster run needs (the demo corpus and the test cluster add their own).
setup: $(VENV)/.installed
	$(BIN)/python scripts/check_venv.py constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup_venv.sh
	scripts/setup_venv.sh $(VENV)
	touch $@

system-deps:
	scripts/install_system_deps.sh --demo

# The tests also start a real single-node SLURM cluster (Debian's slurmctld, slurmd, munge, slurmdbd, MariaDB).
test-deps:
	scripts/install_system_deps.sh --demo --slurm

# The corpus is generated first with every core (flite processes in parallel); then every job runs on one thread
# (OMP_NUM_THREADS=1 above) and Snakemake runs as many jobs at once as there are cores: the demo's jobs are short
# and single-threaded, so a rule claiming several threads would only keep the other cores idle.
demo: setup system-deps
	$(BIN)/snakemake --cores $(CORES) resources/demo/info.json
	$(BIN)/snakemake --cores $(CORES) --max-threads 1 all
	$(BIN)/python -m eval.report --print results/report

# The official ZeroSpeech toolkit in its own venv (pandas 2, pydantic 1): the submission validation test runs it.
.venv-zrc/.installed: scripts/zrc-requirements.txt scripts/setup_zrc_venv.sh $(VENV)/.installed
	scripts/setup_zrc_venv.sh .venv-zrc

# TEXTLESS_STRICT=1: a test that would skip for a missing system package fails instead (make installs them all).
# The fast tier first (a failure there stops before the long tier), then the slow one; each on WORKERS pytest-xdist
# processes (the tests on the local SLURM cluster stay on one of them, see tests/conftest.py).
WORKERS ?= 2
PYTEST := TEXTLESS_STRICT=1 $(BIN)/pytest -n $(WORKERS) --dist loadfile --durations=15
test: setup test-deps .venv-zrc/.installed
	$(PYTEST) -m "not slow"
	$(PYTEST) -m slow

# The fast tier: no SLURM cluster, no end-to-end DAG (tests marked `slow` are left out).
test-fast: setup system-deps
	$(PYTEST) -m "not slow"

# The paper recipe's plan on a miniature copy of its data (pipeline.rehearsal, seconds): the dry run of configs/paper.yaml
# as a cluster user runs it (2 nodes x 8 GPUs), with every training layout. Planned in its own directory, so this
# checkout's results/ do not change the plan. The tiny Hugging Face encoders are read offline from the tree's cache.
REHEARSAL ?= resources/rehearsal
rehearsal-plan: setup $(REHEARSAL)/data/info.json
	mkdir -p $(REHEARSAL)/plan
	HF_HUB_OFFLINE=1 HF_HUB_CACHE=$(abspath $(REHEARSAL))/data/huggingface/hub \
	SBATCH_ACCOUNT=$${SBATCH_ACCOUNT:-rehearsal} SBATCH_PARTITION=$${SBATCH_PARTITION:-gpu} \
	$(BIN)/snakemake --profile slurm --workflow-profile slurm/profiles/2x8 --directory $(REHEARSAL)/plan \
	    --configfile configs/paper.yaml --replace-workflow-config --config data_root=$(abspath $(REHEARSAL))/data -n all

# The rehearsal itself: configs/paper.yaml + configs/rehearsal.yaml through slurm/profiles/2x8 on the local two-node
# SLURM cluster (stand-in GPUs), reruns after hyperparameter changes, a requeued job and one at its time limit.
rehearsal: setup test-deps
	TEXTLESS_STRICT=1 TEXTLESS_REHEARSAL=1 $(BIN)/pytest -m slow tests/test_rehearsal.py -k whole_paper_dag -s

$(REHEARSAL)/data/info.json: pipeline/rehearsal.py data/demo.py
	$(BIN)/python -m pipeline.rehearsal --out $(REHEARSAL)/data

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow/
	# Two lints remain by design (no conda/container per rule: the pinned venv is the software; PATH set by the
	# workflow), see the Snakefile docstring; the command prints them without failing.
	-$(BIN)/snakemake --lint

dag: setup
	$(BIN)/snakemake --rulegraph mermaid-js

clean:
	rm -rf results logs .snakemake
