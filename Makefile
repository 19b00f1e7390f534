# Three commands do all set-up on a fresh machine (Python 3.10-3.13 with venv):
#   make demo      # DreamBooth on the shipped toy model: make_tfrecords (class images) -> train -> evaluate
#   make test      # the fast tier, pytest -m "not slow": every command end to end on the tiny preset,
#                  # the bad-input refusals, one topology-invariance and one resume check
#   make test-all  # the whole suite, what CI runs (.ci/run): adds the `slow` tests, i.e. full-size
#                  # keras-cv equivalence, every distributed run, gs:// end to end, JAX engine vs TF, LoRA, formats
# Packages are installed at the versions in constraints.txt (pyproject.toml holds the supported ranges).
# Both test targets exit with pytest's status: 0 only when every selected test passed.
VENV ?= .venv
PYTHON = $(VENV)/bin/python
STAMP = $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

.PHONY: install demo test test-all
install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m dbdist.demo --output_dir=demo_out

test: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

# The full-size format tests build sd-v1/sd-v2 networks in the pytest process, whose memory is not
# handed back: in one process with the rest (whose keras-cv pairs then need ~12 GB more) CI was
# OOM-killed on 24 GB. They run in a second pytest process; the target fails if either fails.
FULL_SIZE_FORMAT_TESTS = tests/test_formats_unet.py tests/test_formats_encoders.py

test-all: $(STAMP)
	$(PYTHON) -m pytest -q $(addprefix --ignore=,$(FULL_SIZE_FORMAT_TESTS))
	$(PYTHON) -m pytest -q $(FULL_SIZE_FORMAT_TESTS)
