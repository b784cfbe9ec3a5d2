"""Offline W&B run files hold what a run logged: the ablation axes as top-level config keys,
the grid as group, the variant as name, and every training metric of `metrics.jsonl`.

W&B has no offline reader, so the `.wandb` file is read here directly: a LevelDB-style log
(7-byte ':W&B' header, 32 KiB blocks of [crc32 u32, length u16, type u8] chunks) of
`wandb_internal_pb2.Record` protobufs -- the format `wandb sync` uploads."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import compose_config, read_metrics

BLOCK = 32768


def read_wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B log"
    pos, chunks, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        else:  # last
            chunks.append(pending + chunk)
    records = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def test_offline_run_files_contain_config_axes_and_the_logged_metrics(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from llava_ablate.run_environment import current_environment
    from llava_ablate.tracking import Tracker
    from llava_ablate.train.metrics import MetricsLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_config(["+experiment=tiny_finetune", "llm=tiny_qwen2", "vision=tiny_siglip"])
    tracker = Tracker(
        enabled=True, project="llava-ablate-test", entity=None, group="tiny_2x2",
        name="llm=tiny_qwen2,vision=tiny_siglip", run_dir=tmp_path,
        config=OmegaConf.to_container(cfg, resolve=False), environment=current_environment(),
    )  # fmt: skip
    assert tracker.run is not None
    metrics = MetricsLogger(tmp_path, enabled=True, tracker=tracker)
    for step in (5, 10, 15):
        metrics.log(step, {"loss": 6.0 / step, "lr/llm": 1e-3 * step, "tokens_per_s": 100.0 + step})
    tracker.log({"eval/digits/accuracy": 0.625}, step=15)
    tracker.log_table(
        "eval/digits/per_class",
        [{"class_name": "seven", "accuracy": 0.5}, {"class_name": "one", "accuracy": 1.0}],
        step=15,
    )
    tracker.finish()

    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "tiny_2x2" and run.display_name == "llm=tiny_qwen2,vision=tiny_siglip"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    unwrap = lambda v: v["value"] if isinstance(v, dict) and "value" in v else v  # noqa: E731
    assert unwrap(config["llm"]) == "tiny_qwen2" and unwrap(config["vision"]) == "tiny_siglip"
    assert unwrap(config["recipe"]) == "finetune" and unwrap(config["deepspeed"]) == "zero2"
    assert unwrap(config["environment"]) == current_environment()  # what the run ran on
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            history.setdefault(row["_step"], {}).update(row)
    local = read_metrics(tmp_path)
    assert [row["step"] for row in local] == [5, 10, 15] == sorted(history)
    for row in local:  # the W&B mirror holds exactly what metrics.jsonl holds
        logged = history[row["step"]]
        for key in ("loss", "lr/llm", "tokens_per_s"):
            assert logged[f"train/{key}"] == pytest.approx(row[key], rel=1e-12)
    assert history[15]["eval/digits/accuracy"] == 0.625
    table = {
        k.rsplit("/", 1)[1]: v
        for k, v in history[15].items()  # a W&B Table (a file)
        if k.startswith("eval/digits/per_class/")
    }
    assert table["_type"] == "table-file" and table["nrows"] == 2 and table["ncols"] == 2
