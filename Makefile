# Set-up is idempotent: every target below re-runs it and it only does what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup rollout test bench

setup:
	bash launch/setup.sh

rollout: setup
	$(PY) -m launch.rollout $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

bench: setup
	$(PY) -m launch.bench_generation $(ARGS)
