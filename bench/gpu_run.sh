#!/usr/bin/env bash
# The GPU check in one command, on a lent GPU machine (no package registry there): install the
# GPU kit (`make gpu-kit`, carried as .gpu-kit) offline into a venv layered over the image's
# torch, print the versions it runs with, then run `python -m bench gpu` and the bf16 CUDA
# end-to-end train + evaluate tests. Results under $OUT (the device tool brings them back).
#
#   bash bench/gpu_run.sh           # ~10 min: both LLMs x group/pack, eval, CUDA tests
#   bash bench/gpu_run.sh --quick   # ~5 min: group batching only, fewer steps, CUDA tests
#   bash bench/gpu_run.sh --smoke   # the CPU rehearsal (tests/test_gpu_kit.py): bench gpu --smoke
#
# GPU_RUN_PYTHON (default python3: the image's), GPU_KIT (default .gpu-kit), GPU_RUN_VENV,
# GPU_RUN_WORK (the bench's runs) and LLAVA_CACHE_DIR name what it uses; OUT defaults to
# runs/gpu_run, and the others to folders beside it under runs/ (ignored by git, not brought back).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:---full}
case $MODE in --full | --quick | --smoke) ;; *) echo "usage: $0 [--quick|--smoke]" >&2; exit 2 ;; esac
PY=${GPU_RUN_PYTHON:-python3}
KIT=${GPU_KIT:-.gpu-kit}
OUT=${OUT:-runs/gpu_run}
VENV=${GPU_RUN_VENV:-$PWD/runs/gpu_run_venv}
WORK=${GPU_RUN_WORK:-$PWD/runs/gpu_run_work}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
t0=$SECONDS
step() { echo "== [$((SECONDS - t0)) s] $*"; }

step "kit $KIT against its manifest"
"$PY" bench/gpu_kit.py verify "$KIT"

step "venv $VENV over $("$PY" -c 'import sys; print(sys.prefix)')"
rm -rf "$VENV"
"$PY" -m venv --without-pip "$VENV" # the image's python may lack ensurepip; its pip installs
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for base in $("$PY" -c 'import site; print(" ".join(site.getsitepackages()))'); do
  # addsitedir, not a bare path: the image's own .pth files are read too. The venv's
  # site-packages stays first on sys.path, so the kit's versions shadow the image's.
  echo "import site; site.addsitedir('$base')" >>"$site/_image_site.pth"
done
"$PY" -m pip --python "$VENV/bin/python" install -q --no-index --no-deps --no-compile \
  --disable-pip-version-check "$KIT"/wheels/*.whl
VPY=$VENV/bin/python
# The image's tools (ninja for DeepSpeed's JIT ops, torchrun) beside its python.
export PATH="$VENV/bin:$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"

step "versions"
"$VPY" bench/gpu_kit.py preflight
"$VPY" - "$OUT/versions.json" <<'EOF'
import json, platform, sys
from importlib import metadata
import torch
names = ["torch", "transformers", "deepspeed", "peft", "accelerate", "hydra-core", "omegaconf",
         "webdataset", "huggingface_hub", "tokenizers", "safetensors", "numpy", "pydantic"]
v = {n: metadata.version(n) for n in names}
v.update(python=platform.python_version(), cuda=torch.version.cuda,
         gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
         bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
json.dump(v, open(sys.argv[1], "w"), indent=2)
print(json.dumps(v, indent=2))
EOF

export LLAVA_CACHE_DIR=${LLAVA_CACHE_DIR:-$PWD/runs/gpu_run_cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# mini-classify generated here (its Fashion-MNIST source files are not on the device).
mkdir -p "$LLAVA_CACHE_DIR" && tar -xf "$KIT/mini_classify.tar" -C "$LLAVA_CACHE_DIR"

bench=("$VPY" -m bench gpu --smollm2-shape "$KIT/smollm2" --work-dir "$WORK"
  --out "$OUT/bench_gpu.json")
case $MODE in
  --full) ;;
  --quick) bench+=(--batching group --steps 20) ;;
  --smoke) bench+=(--smoke --peak-tflops 1) ;;
esac
step "${bench[*]}"
"${bench[@]}"

step "bf16 CUDA end-to-end tests"
if [ "$MODE" = --smoke ]; then
  # No GPU here: collected (their imports work in this venv) and skipped, said so.
  "$VPY" -m pytest tests/test_cuda_e2e.py -q -p no:cacheprovider -rs
else
  LLAVA_REQUIRE_CUDA=1 "$VPY" -m pytest tests/test_cuda_e2e.py -q -x -p no:cacheprovider \
    --junitxml="$OUT/cuda_e2e.xml"
fi
step "done: results in $OUT"
