# The README's two commands: `make repro` (main job) and `make test` (tests). Both create the virtual
# environment on first use (Python 3.11 + pip, offline but for the package registry) and register its
# Jupyter kernel, so papermill runs the notebooks on this environment and no other Python.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: repro test setup lab quickstart clean-checkpoints browser tcmalloc

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The Jupyter kernel every stage's notebook runs on (papermill starts it, however DVC was called), preloading
# tcmalloc where the machine has it: the same numbers, an ADD step 18% faster on a 2-core EPYC (addlib/malloc.py).
KERNEL := $(VENV)/share/jupyter/kernels/addlib/kernel.json
$(KERNEL): $(VENV)/.installed addlib/malloc.py | tcmalloc
	$(BIN)/python -m ipykernel install --sys-prefix --name addlib --display-name "Python (addlib)" \
	  $$($(BIN)/python -m addlib.malloc --kernel-env)
	$(BIN)/python -m addlib.malloc

setup: $(KERNEL)

repro: $(KERNEL)
	$(BIN)/dvc repro

# Two pytest-xdist workers: the two end-to-end tests start at once, one each (tests/conftest.py gives each
# worker half the cores); the short tests fill the time beside them.
test: $(KERNEL) browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# Debian's chromium, for the report's headless-browser screenshot test (as root, or through sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends chromium; }

# Debian's tcmalloc for the kernel above, where apt is there (as root, or through sudo); without it the system's
# allocator runs the same pipeline, slower.
tcmalloc:
	@ls /usr/lib/*/libtcmalloc_minimal.so* /usr/lib64/libtcmalloc_minimal.so* >/dev/null 2>&1 || \
	  ! command -v apt-get >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends \
	  libtcmalloc-minimal4 || echo "tcmalloc not installed: the system's allocator (the same results, slower)"; }

# The whole pipeline at tiny training budgets in a sandbox (.quickstart/), leaving params.yaml and the results as they are.
quickstart: $(KERNEL)
	$(BIN)/python -m addlib.quickstart

# JupyterLab on the project's kernel; as root (containers) it needs --allow-root.
lab: $(KERNEL)
	$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root)

clean-checkpoints:
	rm -rf checkpoints
