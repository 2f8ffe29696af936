# The two commands a new user types (see README): `make run` and `make test`.
# Both create .venv on first use and reinstall only when requirements change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast test-data lint promote demo space dashboard clean-runs

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(STAMP)

# The whole loop once, in minutes: the seed's custom CNN under a time budget, the best quick transfer
# recipe, a comparison of the two, promotion of the better by validation, and a summary. Each step is an
# existing script. SEED_BUDGET=10m (etc.) gives the seed longer; `python experiments/run.py --arch
# custom_cnn` is the seed's full 20-epoch recipe.
SEED_BUDGET ?= 3m
# The seed CNN (13.6 G mult-adds a photo) is validated and tested on a stratified sample of this many photos
# per split, each accuracy with its 95% interval: all 1,400 took 7.5 min on a CPU without native bf16.
SEED_EVAL_SAMPLE ?= 200
TRANSFER ?= experiments/configs/lite0_features_cats_vs_dogs.yaml
FIRST_HOUR := runs/first-hour
run: setup
	$(PY) experiments/run.py --config experiments/configs/custom_cnn_cats_vs_dogs.yaml --time-budget $(SEED_BUDGET) --eval-sample $(SEED_EVAL_SAMPLE) --output-dir $(FIRST_HOUR) $(ARGS)
	$(PY) experiments/run.py --config $(TRANSFER) --output-dir $(FIRST_HOUR) $(ARGS)
	$(PY) experiments/compare.py --runs $(FIRST_HOUR) --task cats_vs_dogs --out reports --name first-hour --no-comet
	$(PY) experiments/promote.py --task cats_vs_dogs --runs-root $(FIRST_HOUR) || [ $$? -eq 3 ]  # 3: refused, production is at least as good
	$(PY) experiments/summary.py --runs $(FIRST_HOUR) --report reports/first-hour

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
	$(PY) -m pytest --full $(ARGS)

# The in-process tier, minutes: bare `pytest` (tests/conftest.py leaves out the tests marked slow, browser,
# postgres or distributed; tests/runs.py refuses a process to a test without those marks). A test that
# needs the shared real photos skips, saying so, where there are none.
test-fast: setup
	$(PY) -m pytest $(ARGS)

# The real test photos (tests/data/README.md), from the public archives: about 1.6 GB to fetch once.
REAL_PHOTOS = $(or $(PETLAB_DATA_DIR),../shared/data)
test-data: setup
	$(PY) -m tests.data.build --out $(REAL_PHOTOS)

lint: setup
	$(VENV)/bin/ruff check .
