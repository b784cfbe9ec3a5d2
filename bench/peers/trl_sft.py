"""TRL's SFTTrainer on a LLaVA export, written as TRL's and transformers' guides fine-tune a VLM:
`AutoModelForImageTextToText` + `AutoProcessor`, a `datasets.Dataset` of `images` + `messages`,
`SFTConfig`, `SFTTrainer(..., processing_class=processor)` and its own vision collator.

    torchrun --nproc_per_node=2 bench/peers/trl_sft.py JOB.json     # in .venv-peers (make peers)

JOB.json (written by bench/train_throughput.py): model_dir, rows (LLaVA-format JSON), image_root,
steps, micro_batch, lr, log_every, zero_stage (null: DDP), seed, out_dir.
Set against the defaults of SFTConfig: fp32 (`bf16=False`; bf16 autocast is ~25x slower on
CPU), gradient checkpointing as the job says (off
by default in the bench, for every trainer), the vision tower frozen and a
constant lr (our finetune recipe's setting in the bench), gloo on CPU (`use_cpu`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset, Image, List
from step_clock import StepClock
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer

ROLES = {"human": "user", "gpt": "assistant"}


def vlm_rows(rows_json: str, image_root: str) -> Dataset:
    """LLaVA rows as TRL's vision format: `messages` (the `<image>` placeholder dropped; TRL puts
    the image block in the first user turn) and `images` (decoded by `datasets` on access)."""
    rows = []
    for row in json.loads(Path(rows_json).read_text()):
        messages = [
            {"role": ROLES[t["from"]], "content": t["value"].replace("<image>", "").strip()}
            for t in row["conversations"]
        ]
        images = [str(Path(image_root) / row["image"])] if row.get("image") else []
        rows.append({"messages": messages, "images": images})
    return Dataset.from_list(rows).cast_column("images", List(Image()))


def deepspeed_config(stage: int | None) -> dict | None:
    if stage is None:
        return None
    return {  # "auto": the Trainer fills them in from SFTConfig
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": stage},
        "zero_force_ds_cpu_optimizer": False,  # the Trainer's own AdamW on CPU
        "zero_allow_untested_optimizer": True,
    }


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    model = AutoModelForImageTextToText.from_pretrained(job["model_dir"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(job["model_dir"])
    model.model.vision_tower.requires_grad_(False)
    config = SFTConfig(
        output_dir=str(Path(job["out_dir"]) / "trainer"),
        max_steps=job["steps"],
        per_device_train_batch_size=job["micro_batch"],
        gradient_accumulation_steps=1,
        learning_rate=job["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=job["log_every"],
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=job["gradient_checkpointing"],
        max_length=None,  # the bench's samples all fit; no truncation (ours truncates none)
        use_cpu=True,  # else accelerate sees no accelerator and runs as one process
        ddp_backend="gloo",
        deepspeed=deepspeed_config(job["zero_stage"]),
        seed=job["seed"],
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=vlm_rows(job["rows"], job["image_root"]),
        processing_class=processor,
        callbacks=[StepClock(job["out_dir"])],
    )
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1])
