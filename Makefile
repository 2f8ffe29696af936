# The two commands a new user types (see README): `make run` and `make test`.
# Both create .venv on first use and reinstall only when requirements change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test lint promote demo space dashboard clean-runs

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

# Register the best cats-vs-dogs run (by validation accuracy) as production: ARGS="--task breeds" for the breeds model.
promote: setup
	$(PY) experiments/promote.py $(if $(ARGS),$(ARGS),--task cats_vs_dogs)

# The Gradio page and JSON API on http://127.0.0.1:7860 (ARGS="--port 8000" etc.).
demo: setup
	$(PY) demo/app.py $(ARGS)

# The live view of sweeps: optuna-dashboard on http://127.0.0.1:8080 over the sweeps' storage
# (runs/optuna.db; ARGS="--storage postgresql://... --port 8081" etc.).
dashboard: setup
	$(PY) experiments/dashboard.py $(ARGS)

# A Hugging Face Space in build/space: the demo, petlab and the production models.
space: setup
	$(PY) demo/build_space.py $(ARGS)

# .ci/test-deps installs (as root) or names (otherwise) the system packages the tests use for real.
test: setup
	bash .ci/test-deps
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
