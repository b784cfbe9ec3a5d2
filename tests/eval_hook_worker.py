"""torchrun worker for test_eval_hook: a tiny LLaVA under a DeepSpeed ZeRO-3 engine runs the
training-eval hook; rank 0 writes what the hook returned."""

import json
import sys
from pathlib import Path

import deepspeed
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_hook import hook_for  # noqa: E402

from llava_ablate.base.distributed import init_distributed, shutdown_distributed  # noqa: E402

from conftest import build_tiny  # noqa: E402

cache, data, out = (Path(a) for a in sys.argv[1:4])
info = init_distributed()
torch.manual_seed(0)
variant = build_tiny(cache)
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    "zero_force_ds_cpu_optimizer": False,
}
engine, *_ = deepspeed.initialize(
    model=variant.model, model_parameters=variant.model.parameters(), config=config
)
engine.module.train()
hook = hook_for(variant.processor, data, out)
assert hook.maybe_run(engine.module, 3, final=False) is None  # not due
result = hook.maybe_run(engine.module, 4, final=False)
assert engine.module.training  # switched back
if info.rank == 0:
    (out / "result.json").write_text(json.dumps(result))
shutdown_distributed()
