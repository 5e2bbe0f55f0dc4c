# The two commands a fresh machine needs (each sets up .venv first):
#   make demo   train PGD-AT on the built-in synthetic dataset on CPU (about a minute)
#   make test   lint, type-check and run every test
# and, to install only some plugins elsewhere (README "Installing only what you need"):
#   make wheels builds core and every plugin into dist/ (then: pip install --find-links dist energyat-weat)
VENV ?= .venv
BIN := $(VENV)/bin
# the Python whose pip builds the wheels (it needs setuptools >= 64); any environment will do
PYTHON ?= python3

.PHONY: env demo test lint wheels

env:
	bash scripts/setup-env.sh

demo: env
	$(BIN)/energyat train --method pgd-at --backbone small_cnn --epochs 4 --set attack.steps=5 \
		--set dataset.n_train=2000 --set dataset.n_test=500 --eval-n 500 --device cpu --out runs/demo --overwrite
	$(BIN)/energyat eval runs/demo --n 500

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy energyat_core

test: env lint
	$(BIN)/python -m pytest -n 2 --durations=15

# every distribution (core + plugins/*) as a wheel in dist/, so that pip finds first-party
# dependencies (energyat-weat -> energyat-trades, energyat-pgd, energyat-core) there
wheels:
	rm -f dist/energyat_*.whl
	$(PYTHON) -m pip wheel -q --no-deps --no-build-isolation -w dist . plugins/*
