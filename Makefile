# Two commands do all the set-up on a fresh machine (see README):
#   make quickstart   create .venv, install, run the whole method on the built-in task
#   make test         create .venv, install, lint and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# Every install is pinned to the versions the suite passed with (constraints.txt).
PIP := PIP_CONSTRAINT=constraints.txt $(PY) -m pip
OUT ?= out/quickstart

.PHONY: venv quickstart test lint format clean

$(VENV)/.installed: setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned to the CPU build that the test extra was tried with.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e '.[test,hf,tpu]'
	touch $@

venv: $(VENV)/.installed

quickstart: $(VENV)/.installed
	# The quickstart is a CPU demo: JAX stays on the CPU (no TPU probe where libtpu is installed)
	# unless JAX_PLATFORMS says otherwise.
	JAX_PLATFORMS="$${JAX_PLATFORMS:-cpu}" $(VENV)/bin/dsbs quickstart --out $(OUT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Two workers: most tests spend their time in one thread (imports, tracing, tf.data set-up),
# so two keep a 2-core CI machine busy. Each test file runs whole on one worker, in order.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile tests

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) out build *.egg-info
