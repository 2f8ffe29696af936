# The two commands a new user types (see README): `make run` and `make test`.
# Both create .venv on first use and reinstall only when requirements change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean-runs

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(STAMP)

# The main job: the seed project's custom CNN on the default cats-vs-dogs dataset.
run: setup
	$(PY) experiments/run.py --config experiments/configs/custom_cnn_cats_vs_dogs.yaml $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
