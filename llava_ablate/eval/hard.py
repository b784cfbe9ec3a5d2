"""Which classes count as hard: configurable, because the paper does not define it.

- `bottom_q`: the q fraction of classes with the lowest accuracy in a reference run's
  per_class.csv (ours, a CLIP baseline's, or a LLaVA-1.5 results file with `class_name,accuracy`;
  `{dataset}` in the path selects the file per dataset).
- `list`: explicit class names.
- `exposure`: the q fraction least seen in training, from the data pipeline's exposure table,
  a CSV with header `class_name,exposure` (exposure: occurrences of the concept in the training
  text; any non-negative number).
Ties at the cut-off are broken by class name, so the selection is deterministic.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from llava_ablate.eval_config import HardCfg

log = logging.getLogger(__name__)


def _read_column(path: str, column: str) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"class_name", column} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV header with class_name,{column}")
        return {row["class_name"]: float(row[column]) for row in reader}


def _lowest(values: dict[str, float], classnames: list[str], q: float, what: str) -> set[str]:
    known = {c: values[c] for c in classnames if c in values}
    missing = len(classnames) - len(known)
    if missing:
        log.warning(
            "hard classes: %d of %d classes have no %s; they are ignored",
            missing,
            len(classnames),
            what,
        )
    ranked = sorted(known, key=lambda c: (known[c], c))
    return set(ranked[: max(1, math.ceil(q * len(ranked)))]) if ranked else set()


class HardClassSelector:
    def __init__(self, cfg: HardCfg):
        self.cfg = cfg

    def select(self, classnames: list[str], dataset: str = "") -> set[str]:
        """The hard subset of `classnames`; `{dataset}` in a path is replaced by `dataset`."""
        cfg = self.cfg
        if cfg.mode == "none":
            return set()
        if cfg.mode == "list":
            unknown = sorted(set(cfg.classes) - set(classnames))
            if unknown:
                log.warning("hard classes not in this dataset (ignored): %s", unknown[:10])
            return set(cfg.classes) & set(classnames)
        if cfg.mode == "bottom_q":
            reference = cfg.reference.format(dataset=dataset)
            return _lowest(_read_column(reference, "accuracy"), classnames, cfg.q, "reference")
        if cfg.mode == "exposure":
            table = _read_column(cfg.exposure_table.format(dataset=dataset), "exposure")
            return _lowest(table, classnames, cfg.q, "exposure entry")
        raise ValueError(f"eval.hard.mode={cfg.mode!r}: none | bottom_q | list | exposure")

    def describe(self) -> str:
        c = self.cfg
        return {
            "none": "none",
            "list": f"list of {len(c.classes)}",
            "bottom_q": f"bottom {c.q:.0%} by {Path(str(c.reference)).name}",
            "exposure": f"lowest {c.q:.0%} exposure in {Path(str(c.exposure_table)).name}",
        }[c.mode]
