# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The oldest supported releases, pinned in constraints-floors.txt.
FLOORS := .venv-floors
FLOORS_STAMP := $(FLOORS)/.installed

.PHONY: demo demo-digits test test-floors lint format bench docs install clean

# Demo outputs go here, outside the tracked files.
DEMO_OUT := demo-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Reinstall when the project's metadata changes.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -e ".[test,examples,docs]"
	touch $(STAMP)

install: $(STAMP)

# The main job: all-MiniLM-L6-v2 finetuned with AdamW, NanoAdam and GaLore
# (~7 min on 2 cores).
demo: $(STAMP)
	$(BIN)/python studies/finetune_minilm.py --demo --out $(DEMO_OUT)

# The fast example: an MLP on sklearn's digits (~2 min).
demo-digits: $(STAMP)
	$(BIN)/python studies/compare_finetuning.py --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two workers (pytest-xdist), each test file whole on one so that its
# module fixtures are built once (three test files: 1.29x faster on 2 cores).
# TEST_WORKERS=0 runs the suite in this process. The slowest tests are
# listed at the end, to see where the suite's time goes.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

# A separate venv with exactly the floor versions of the dependencies,
# rebuilt whenever the pins or the project's metadata change.
$(FLOORS_STAMP): pyproject.toml constraints-floors.txt
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/pip install --upgrade pip
	$(FLOORS)/bin/pip install -c constraints-floors.txt -e ".[test,docs]"
	touch $(FLOORS_STAMP)

test-floors: $(FLOORS_STAMP)
	$(FLOORS)/bin/pip freeze | grep -iE '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint)=='
	$(FLOORS)/bin/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The documentation site (Sphinx, MyST Markdown), warnings as errors.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py

clean:
	rm -rf $(VENV) $(FLOORS) build docs/_build *.egg-info .pytest_cache .ruff_cache $(DEMO_OUT)
