# Set-up is idempotent: every target below re-runs it and it only does what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup train rollout test bench

setup:
	bash launch/setup.sh

train: setup
	$(PY) -m launch.train experiment=textworld_debug $(ARGS)

rollout: setup
	$(PY) -m launch.rollout $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

bench: setup
	$(PY) -m benchmarks.generation $(ARGS)
