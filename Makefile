# Two commands get a new user going on a fresh machine:
#   make sweep   the main job: a Ray Tune sweep on the embedded synthetic faces (CPU)
#   make test    the whole test suite, slow end-to-end tests included
# Both create .venv and install the project into it when needed. Nothing is activated: run
# the project's commands as .venv/bin/python -m ... (README), or `. .venv/bin/activate` first.
#   make sweep ARGS="--smoke-test"   extra options for sweep.run (here: 4 tiny trials)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: sweep test bench install clean

# The install's own commands are not echoed: a user sees one line, then pip's.
# torch/torchvision are pinned to the releases this machine serves from disk; any torch>=2.3
# works (see pyproject.toml) when you install by hand.
$(STAMP): pyproject.toml
	@echo "Installing the project into $(VENV) (first run: a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install --quiet torch torchvision
	@$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

sweep: $(STAMP)
	$(PY) -m sweep.run --cluster clusters/local.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
