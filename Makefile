PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -qq -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -qq -e '.[test]'
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/amqpbroker $(ARGS)

# two workers, a test file each at a time (a file's tests share its brokers); TEST_WORKERS=0: one process
TEST_WORKERS ?= 2

test: $(STAMP_TEST)
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP_TEST)
	$(BIN)/python -m interop.bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
