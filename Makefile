# make run   - set up and run the server on the default state directory
# make test  - set up and run the test suite
# make bench - set up and run the benchmark (BENCH_ARGS=--quick for a short run)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-system
	./scripts/setup-system
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(VENV)/bin/trustplane serve

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 4 --dist loadfile

bench: $(STAMP)
	./scripts/setup-system netconfd openssh-server
	$(VENV)/bin/python bench/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
