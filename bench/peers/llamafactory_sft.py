"""LLaMA-Factory's SFT on a LLaVA export, as its docs run a full fine-tune: a ShareGPT-format
dataset registered in `dataset_info.json`, `template: llava`, `finetuning_type: full`, its
`run_exp` (what `llamafactory-cli train config.yaml` calls) with the arguments of such a YAML.

    torchrun --nproc_per_node=2 bench/peers/llamafactory_sft.py JOB.json  # in .venv-llamafactory

JOB.json: as for trl_sft.py, plus `stub_torchaudio`: LLaMA-Factory imports torchaudio at the top
of its multimodal plugin (llamafactory/data/mm_plugin.py) but uses it for audio only; no
torchaudio release loads beside torch 2.13 (the newest, 2.11.1, fails to load its library), so
with this set an empty module stands in for it (the `llamafactory-noaudio` row of the bench:
LLaMA-Factory's own code otherwise unchanged). Set against LLaMA-Factory's defaults: fp32 (`bf16: false`), gradient
checkpointing as the job says (`disable_gradient_checkpointing`; it turns it on by default),
a constant lr, gloo on CPU. `freeze_vision_tower` is its default (true), as in ours.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

from step_clock import StepClock


def sharegpt_dataset(rows_json: str, image_root: str, out: Path) -> str:
    """LLaVA rows in LLaMA-Factory's ShareGPT layout (`conversations` + `images`, `<image>`
    kept in the text), registered under the name returned."""
    rows = []
    for row in json.loads(Path(rows_json).read_text()):
        images = [str(Path(image_root) / row["image"])] if row.get("image") else []
        rows.append({"conversations": row["conversations"], "images": images})
    info = {
        "bench_mix": {
            "file_name": "bench_mix.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images"},
        }
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("bench_mix.json", rows), ("dataset_info.json", info)):
        tmp = out / f".{name}.{os.getpid()}"  # every rank writes the same bytes
        tmp.write_text(json.dumps(data))
        tmp.replace(out / name)
    return "bench_mix"


def deepspeed_file(stage: int | None, out: Path) -> str | None:
    """Its examples/deepspeed/ds_z{2,3}_config.json, plus what the CPU needs."""
    if stage is None:
        return None
    config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # the Trainer's own AdamW on CPU
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
    }
    path = out / f"ds_z{stage}.json"
    tmp = out / f".ds.{os.getpid()}"
    tmp.write_text(json.dumps(config))
    tmp.replace(path)
    return str(path)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job.get("stub_torchaudio"):
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from llamafactory.train.tuner import run_exp

    out = Path(job["out_dir"])
    data_dir = out / "data"
    args = {
        "model_name_or_path": job["model_dir"],
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": True,
        "template": "llava",
        "dataset": sharegpt_dataset(job["rows"], job["image_root"], data_dir),
        "dataset_dir": str(data_dir),
        "cutoff_len": job["max_length"],
        "preprocessing_num_workers": 1,
        "overwrite_cache": True,
        "output_dir": str(out / "trainer"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": job["micro_batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": job["lr"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_steps": job["steps"],
        "logging_steps": job["log_every"],
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "disable_gradient_checkpointing": not job["gradient_checkpointing"],
        "use_cpu": True,  # else accelerate sees no accelerator and runs as one process
        "ddp_backend": "gloo",
        "deepspeed": deepspeed_file(job["zero_stage"], out),
        "seed": job["seed"],
        "dataloader_num_workers": 0,
    }
    run_exp(args, callbacks=[StepClock(out)])


if __name__ == "__main__":
    main(sys.argv[1])
