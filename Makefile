# Thin targets: the work lives in scripts/ and pytest.
VENV ?= .venv
PYTEST ?= $(VENV)/bin/pytest
DEMO_EXIT ?= 0

.PHONY: setup demo test test-quick bench reliability

setup:
	scripts/setup

demo: setup
	DEMO_EXIT=$(DEMO_EXIT) scripts/demo

test: setup
	PYTEST=$(PYTEST) scripts/test

test-quick:
	$(PYTEST) tests -m "not slow"

reliability: setup
	VENV=$(VENV) scripts/reliability

bench: setup
	@for b in bench/*.py; do \
	  case $$b in */__init__.py) continue;; esac; \
	  echo "== $$b"; $(VENV)/bin/python $$b || exit 1; \
	done
