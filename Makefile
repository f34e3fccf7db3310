# neurosono: `make demo` runs the main job on its embedded default, `make test` runs the tests.
# Both create the virtual environment first (Python 3.11; torch/torchvision pinned in pyproject.toml).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Running `make demo` again resumes the run: finished stages are kept.
DEMO_OUT ?= runs/demo

.PHONY: install browser demo test test-fast lint docs bench clean

# The CPU install takes the pinned set of requirements/cpu.txt with --no-deps: it leaves out triton,
# torch's 900 MB GPU compiler. GPU=1 resolves pyproject.toml instead. --no-cache-dir: no second copy
# of every wheel (4 GB with torch's CUDA runtime) in pip's cache.
GPU ?=
$(STAMP): pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
ifeq ($(GPU),)
	$(BIN)/python -m pip install --quiet --no-cache-dir --no-deps -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --no-cache-dir --no-deps -e .
else
	$(BIN)/python -m pip install --quiet --no-cache-dir -e '.[dev,scale]'
endif
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/neurosono run --out $(DEMO_OUT)

# Debian's chromium and chromium-driver for the browser test, installed where missing (as root,
# or through sudo). `make test` needs them: there the browser test fails rather than skips.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

test: install browser
	NEUROSONO_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q

# Under a minute: everything but the tests that train models, drive the browser or start servers.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The command reference is generated from the command line itself (a test checks it is current).
docs: install
	$(BIN)/python -m neurosono.cli.reference > docs/cli.md
	$(BIN)/python -m neurosono.serve.openapi > docs/openapi.json

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_synth.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
