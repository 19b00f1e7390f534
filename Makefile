# Two commands do all set-up on a fresh machine (Python 3.10-3.13 with venv):
#   make demo   # tiny model, generated sample images, local files: make_tfrecords -> train -> generate
#   make test   # the test suite (what CI runs)
VENV ?= .venv
PYTHON = $(VENV)/bin/python
STAMP = $(VENV)/.installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: install demo test
install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m dbdist.demo --output_dir=demo_out

test: $(STAMP)
	$(PYTHON) -m pytest -q
