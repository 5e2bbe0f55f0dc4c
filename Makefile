# The two commands a fresh machine needs (each sets up .venv first):
#   make demo   train PGD-AT on the built-in synthetic dataset on CPU (about a minute)
#   make test   lint, type-check and run every test
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: env demo test lint

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
