"""Classification data (image folders, CSV or JSONL) turned into instruction samples.

The VLMClassifier-style "classification data" ablation: each labelled image becomes a question
from `questions` (chosen deterministically per image) answered by `answer` with the class name.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from llava_ablate.base.mcq import LETTERS, lettered_options
from llava_ablate.config import SourceCfg
from llava_ablate.data.images import IMAGE_SUFFIXES
from llava_ablate.data.sources import RawRecord, SourceError, require_files


def _read_class_names(path: Path) -> dict[str, tuple[str, str]]:
    """label -> (name, group) from a `label,name[,group]` CSV, or one name per line (label =
    line number from 0)."""
    require_files([path], "class_names")
    lines = path.read_text().splitlines()
    if lines and "," in lines[0]:
        return {
            row[0]: (row[1], row[2] if len(row) > 2 else "")
            for row in csv.reader(lines)
            if len(row) >= 2
        }
    return {str(i): (name.strip(), "") for i, name in enumerate(lines) if name.strip()}


class ClassificationReader:
    def __init__(self, src: SourceCfg, seed: int):
        self.src = src
        self.seed = seed
        path = Path(src.path)
        require_files([path], f"source {src.name!r}")
        root = Path(src.image_root) if src.image_root else path.parent
        if path.is_dir():
            items = [
                (p, p.parent.name)
                for p in sorted(path.glob("*/*"))
                if p.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif path.suffix == ".csv":
            with path.open() as fh:
                rows = list(csv.DictReader(fh))
            if rows and not {"image", "label"} <= set(rows[0]):
                raise SourceError(f"{path}: CSV needs 'image' and 'label' columns")
            items = [(root / r["image"], r["label"]) for r in rows]
        elif path.suffix == ".jsonl":
            items = []
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
                    ok = isinstance(r, dict) and isinstance(r.get("image"), str)
                    if not ok or not isinstance(r.get("label"), str | int):
                        raise SourceError(
                            f'{path}:{lineno}: need {{"image": file name, "label": string or '
                            f"number}}, got {line.strip()[:120]}"
                        )
                    items.append((root / r["image"], str(r["label"])))
        else:
            raise SourceError(f"{path}: classification sources are a folder, .csv or .jsonl")
        if not items:
            raise SourceError(f"{path}: no labelled images found")
        self.items = items
        self.names = _read_class_names(Path(src.class_names)) if src.class_names else {}
        if not src.questions:
            raise SourceError(f"source {src.name!r}: `questions` is empty")

    def __len__(self) -> int:
        return len(self.items)

    def input_files(self) -> list[Path]:
        return [Path(self.src.path)] + (
            [Path(self.src.class_names)] if self.src.class_names else []
        )

    def seek_points(self) -> None:
        return None  # in memory: any index range is cheap

    def image_files(self) -> list[Path]:
        return [image for image, _ in self.items]

    def class_name(self, label: str) -> str:
        return self.names.get(label, (label.replace("_", " "), ""))[0]

    def records(self, start: int, stop: int) -> list[RawRecord]:
        labels = sorted({label for _, label in self.items})
        if self.src.mcq_distractors == "all" and self.names:
            labels = sorted(self.names)  # distractors may name classes this source never shows
        out = []
        for index in range(start, min(stop, len(self.items))):
            image, label = self.items[index]
            rng = random.Random(f"{self.seed}:{index}")  # per image: shards stay deterministic
            question = rng.choice(self.src.questions)
            name = self.class_name(label)
            if rng.random() < self.src.mcq_fraction and len(labels) > 1:
                k = min(self.src.mcq_options, len(labels), len(LETTERS))
                options = rng.sample([x for x in labels if x != label], k - 1) + [label]
                rng.shuffle(options)
                lines = [question]
                lines += lettered_options([self.class_name(o) for o in options])
                question = "\n".join([*lines, self.src.mcq_instruction])
                answer = LETTERS[options.index(label)]
            else:
                group = self.names.get(label, ("", ""))[1]
                answer = self.src.answer.format(name=name, label=label, group=group)
            conversations = [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": answer},
            ]
            out.append(RawRecord(index, f"{self.src.name}-{index}", conversations, [image]))
        return out
