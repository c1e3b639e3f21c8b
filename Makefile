# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup lint check test unit notebooks labs-check demo lab bench golden validate clean

# Reinstall only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

# ruff's lint and its formatter, configured in pyproject.toml
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the edit loop: lint + the unit tests (no notebooks, no labs); about a minute on 2 cores
check: lint unit

unit: setup
	$(PY) -m pytest -q tests

# The numbered notebooks and the instructor versions of the labs (the student versions under
# notebooks/labs/release have stubs that are meant to fail, so nbval does not run them).
notebooks: setup
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  $(PY) -m pytest -q --nbval-lax -p no:cacheprovider notebooks/*.ipynb notebooks/labs/source; \
	else echo "no notebooks yet"; fi

# nbgrader end to end in a temporary course folder: release versions up to date, instructor = full
# marks, untouched student versions = 0, prepared wrong answers lose their part and get their hint.
labs-check: setup
	$(PY) tests/labs/check_labs.py

test: lint unit notebooks labs-check

demo: setup
	$(PY) -m xlnet_ref.demo

lab: setup
	$(VENV)/bin/jupyter lab notebooks

# the training step vs transformers (CPU, float32), then time and memory as seq_len and memory grow
bench: setup
	$(PY) benchmarks/train_step_vs_hf.py
	$(PY) benchmarks/scaling.py

golden: setup
	$(PY) -m xlnet_ref.golden write

validate: setup
	$(PY) -m xlnet_ref.validate --against hf

clean:
	rm -rf $(VENV) .pytest_cache
