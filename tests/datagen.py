"""Small generated fixtures for the data tests: real PNG/JPEG files, LLaVA JSON, parquet."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from llava_ablate.config import DataCfg, SourceCfg

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def image_bytes(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20 + i % 7, 16 + i % 5), (i * 37 % 256, i * 11 % 256, 90)).save(buf, fmt)
    return buf.getvalue()


def llava_rows(n: int, prefix: str, with_images: bool = True) -> list[dict]:
    rows = []
    for i in range(n):
        question = " ".join(WORDS[: 1 + i % len(WORDS)])  # varied lengths
        row = {
            "id": f"{prefix}-{i}",
            "conversations": [
                {
                    "from": "human",
                    "value": ("<image>\n" if with_images and i % 4 else "") + f"Say {question}?",
                },
                {"from": "gpt", "value": f"{prefix} answer {i}."},
            ],
        }
        if with_images and i % 4:  # every 4th sample is text-only
            row["image"] = f"{prefix}/{i}.png"
        rows.append(row)
    return rows


def write_llava_source(root: Path, name: str, n: int, **kw) -> SourceCfg:
    rows = llava_rows(n, name)
    (root / name).mkdir(parents=True, exist_ok=True)
    for row in rows:
        if "image" in row:
            (root / row["image"]).write_bytes(image_bytes(int(row["id"].rsplit("-", 1)[1])))
    path = root / f"{name}.json"
    path.write_text(json.dumps(rows))
    return SourceCfg(name=name, path=str(path), image_root=str(root), **kw)


def data_cfg(name: str, sources: list[SourceCfg], shards_dir: Path, **kw) -> DataCfg:
    return DataCfg(name=name, sources=sources, shards_dir=str(shards_dir), **kw)
