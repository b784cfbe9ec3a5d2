"""The model card an export carries (`export/README.md`), so that uploading the directory to a
hub gives a real card: Hugging Face metadata (library, pipeline, base models, tags, a
model-index of the results) above what made the model -- its axes, data mixture, steps, tokens
seen and command -- and every evaluation made of it, with 95% CIs.

When it is written: as the run exports, with the evaluation the run made at its end (if any);
each later `llava-ablate evaluate` of the export adds its results to `evaluations.json` beside
the card (one entry per dataset x scorer x question set, the newest kept) and writes the card
again. The card is always rendered from `llava_ablate.json` + `evaluations.json`, so it never
holds anything they do not.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llava_ablate.base.files import atomic_write
from llava_ablate.base.video_processors import VIDEO_PROCESSORS, WITHOUT_TORCHVISION
from llava_ablate.run_environment import KEYS as ENV_KEYS

CARD = "README.md"
INFO = "llava_ablate.json"  # written by model/export.py: the variant, steps, tokens, command
EVALUATIONS = "evaluations.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class CardEvaluation:
    """One dataset scored by one scorer, as the card lists it."""

    dataset: str
    scorer: str
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    num_options: int
    fingerprint: str  # of the frozen question set: the same questions for every model
    source: str  # what produced it: the training run's final evaluation or an evaluate out_dir
    hard: dict | None = None  # {"value", "ci_low", "ci_high", "n"} on the hard classes

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.scorer, self.fingerprint)


def evaluations_in(results_dir: Path, source: str) -> list[CardEvaluation]:
    """Every (dataset, scorer) of `<results_dir>/<dataset>/metrics.json`: the one schema
    (eval/results.py) the training hook (`<run>/eval/step_N/`) and evaluate.py write."""
    found = []
    for metrics_file in sorted(Path(results_dir).glob("*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        for scorer, scored in (m.get("scorers") or {}).items():
            acc = scored["accuracy"]
            found.append(
                CardEvaluation(
                    dataset=m.get("dataset", metrics_file.parent.name),
                    scorer=scorer,
                    accuracy=acc["value"],
                    ci_low=acc["ci_low"],
                    ci_high=acc["ci_high"],
                    n=acc["n"],
                    num_options=int(m.get("num_options") or 0),  # 0: not recorded
                    fingerprint=str(m["question_set"]["fingerprint"]),  # eval/results.py
                    source=source,
                    hard=scored.get("hard_accuracy"),
                )
            )
    return found


def record_evaluations(export_dir: Path, evaluations: list[CardEvaluation]) -> Path:
    """Add `evaluations` to the export's record (replacing earlier results of the same dataset,
    scorer and question set) and write its card again; returns the card's path."""
    export_dir = Path(export_dir)
    kept = {e.key: e for e in read_evaluations(export_dir)}
    kept.update({e.key: e for e in evaluations})
    with atomic_write(export_dir / EVALUATIONS) as tmp:
        tmp.write_text(json.dumps([asdict(e) for e in kept.values()], indent=2))
    return write_model_card(export_dir)


def read_evaluations(export_dir: Path) -> list[CardEvaluation]:
    path = Path(export_dir) / EVALUATIONS
    if not path.exists():
        return []
    return [CardEvaluation(**e) for e in json.loads(path.read_text())]


def write_model_card(export_dir: Path) -> Path:
    export_dir = Path(export_dir)
    info = json.loads((export_dir / INFO).read_text())
    card = render_model_card(info, read_evaluations(export_dir), export_dir.parent.name)
    with atomic_write(export_dir / CARD) as tmp:
        tmp.write_text(card)
    return export_dir / CARD


def render_model_card(info: dict, evaluations: list[CardEvaluation], name: str) -> str:
    """The README.md text: YAML front matter (huggingface_hub's own card data) + markdown."""
    variant = info["variant"]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_models(variant) or None,
        tags=["llava", "llava-ablate", "image-text-to-text", *_axis_tags(variant)],
        model_name=name if evaluations else None,
        eval_results=[
            EvalResult(
                task_type="image-classification",
                task_name=f"{e.num_options}-option multiple choice",
                dataset_type=e.dataset,
                dataset_name=e.dataset,
                metric_type="accuracy",
                metric_value=round(e.accuracy, 4),
                metric_name=f"accuracy ({e.scorer})",
            )
            for e in evaluations
        ]
        or None,
    )
    body = "\n".join(
        [
            f"# {name}",
            "",
            "A LLaVA-style model (vision tower -> projector -> LLM) trained by llava-ablate, for "
            "ablations measured by image classification. It loads with transformers' stock "
            "classes, processor and chat template included:",
            "",
            "```python",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            'model = AutoModelForImageTextToText.from_pretrained("<this directory>")',
            'processor = AutoProcessor.from_pretrained("<this directory>")',
            "```",
            "",
            *_without_torchvision(variant),
            *_variant_section(variant, info),
            *_training_section(variant, info),
            *_mixture_section(variant["data"]),
            *_dropped_section(info.get("data_dropped"), variant["recipe"]),
            *_evaluation_section(evaluations),
            "## How it was made",
            "",
            "```bash",
            str(info.get("command") or "(not recorded)"),
            "```",
            "",
            f"on {info.get('world_size', '?')} rank(s); the run directory (the parent of this "
            "one) holds its composed config (`config.yaml`) and `run_identity.json`"
            + (f", config hash `{info['config_hash']}`" if info.get("config_hash") else "")
            + ".",
            "",
            *_environment_section(info),
        ]
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _environment_section(info: dict) -> list[str]:
    """The software and hardware the run started on (run_environment.py) and, in a warning,
    every resume that ran on something else. Absent from older exports."""
    env = info.get("environment")
    if not env:
        return []
    lines = ["## Software", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {env[k]} |" for k in ENV_KEYS if env.get(k) is not None]
    lines.append("")
    for changes in info.get("environment_changes") or []:
        lines += [
            f"**Warning:** resumed on other software than it started with: {'; '.join(changes)}. "
            "Its steps were not all made by the same software.",
            "",
        ]
    return lines


def _without_torchvision(variant: dict) -> list[str]:
    """What a machine without torchvision runs first, for a processor with a video half."""
    arch = (variant.get("arch") or {}).get("type", "llava")
    if arch not in VIDEO_PROCESSORS:
        return []
    return [
        "Images need no torchvision, but transformers ties this processor's video half to it. "
        "Where torchvision is not installed (or does not import), run this once in the process "
        "before `AutoProcessor.from_pretrained` (it imports only transformers; with torchvision "
        "it does nothing):",
        "",
        "```python",
        "import runpy",
        "",
        f'runpy.run_path("<this directory>/{WITHOUT_TORCHVISION}")["allow_video_processors"]()',
        "```",
        "",
    ]


def base_models(variant: dict) -> list[str]:
    """Hub ids of the pretrained tower and LLM (local paths and random inits are not)."""
    ids = []
    for part in ("vision", "llm"):
        source = variant[part].get("pretrained")
        if source and _HUB_ID.fullmatch(source) and not Path(source).exists():
            ids.append(source)
    return ids


def _axis_tags(variant: dict) -> list[str]:
    axes = ("arch", "vision", "llm", "data", "recipe")  # arch: absent from older exports
    return [f"{axis}:{variant[axis]['name']}" for axis in axes if axis in variant]


def _variant_section(variant: dict, info: dict) -> list[str]:
    def source(part: str) -> str:
        pretrained = variant[part].get("pretrained")
        return f"`{pretrained}`" if pretrained else "random init"

    recipe = variant["recipe"]
    lines = [
        "## Variant",
        "",
        "| axis | choice | from |",
        "| --- | --- | --- |",
        *(
            [f"| arch | {variant['arch']['name']} | transformers `{variant['arch']['type']}` |"]
            if "arch" in variant
            else []
        ),  # fmt: skip
        f"| vision | {variant['vision']['name']} | {source('vision')} |",
        f"| llm | {variant['llm']['name']} | {source('llm')} |",
        f"| projector | {variant['projector']['type']} | |",
        f"| data | {variant['data']['name']} | stage {variant['data'].get('stage') or '-'} |",
        f"| recipe | {recipe['name']} | |",
        "",
    ]
    if recipe.get("init_from"):
        parts = ", ".join(recipe.get("init_parts") or [])
        lines += [f"Starts from `{recipe['init_from']}` ({parts}).", ""]
    return lines


def _training_section(variant: dict, info: dict) -> list[str]:
    recipe = variant["recipe"]
    tokens = info.get("tokens")
    lrs = ", ".join(
        f"{k} {'frozen' if v is None else v}" for k, v in (recipe.get("lr") or {}).items()
    )
    return [
        "## Training",
        "",
        f"- steps: {info['steps']} optimizer steps of global batch "
        f"{recipe['global_batch_size']} (micro batch {recipe['micro_batch_size']})",
        f"- tokens seen: {_count(tokens)} (text and image tokens of every sample trained on, "
        "padding excluded)",
        f"- learning rates: {lrs or '-'}; schedule {recipe.get('schedule')}, "
        f"warmup {recipe.get('warmup_ratio')}",
        f"- precision: {info.get('precision')}",
        *_throughput_lines(info.get("throughput")),
        "",
    ]


def _throughput_lines(t: dict | None) -> list[str]:
    """tokens/s, TFLOP/s, MFU and HFU of the run (train/run.py `throughput`); absent before."""
    if not t:
        return []
    line = f"- throughput: {t['tokens_per_s']:,.0f} tokens/s"
    if "tflops_per_device" in t:
        line += (f", {t['tflops_per_device']:.3g} TFLOP/s per device (model FLOPs, the vision "
                 "tower counted)")  # fmt: skip
    if "mfu" in t:
        line += f"; MFU {t['mfu']:.1%}, HFU {t['hfu']:.1%} against {t['peak']}"
    else:
        line += f"; MFU not reported: {t['peak']}"
    return [line]


def _mixture_section(data: dict) -> list[str]:
    lines = [
        f"## Data mixture: {data['name']}",
        "",
        "| source | format | sampling | weight |",
        "| --- | --- | --- | --- |",
    ]
    for s in data.get("sources") or []:
        weight = "by size" if s.get("weight") is None else s["weight"]
        unreleased = "" if s.get("released", True) else " (unreleased)"
        lines.append(
            f"| {s['name']}{unreleased} | {s.get('format', '')} | {s.get('sampling', 'all')} | "
            f"{weight} |"
        )
    return [*lines, ""]


def _dropped_section(dropped: dict | None, recipe: dict) -> list[str]:
    """What of the mixture was not trained on whole: skipped samples (per reason, at build and
    while training) and samples truncated at max_length (per source). Absent from older runs."""
    if dropped is None:
        return []
    lines = ["## Data not trained on whole", ""]
    for where in ("build", "run"):
        counts = dropped.get(where) or {}
        text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        lines.append(f"- skipped {'at build' if where == 'build' else 'while training'}: {text}")
    truncated = dropped.get("truncated") or {}
    if not truncated:
        lines.append(f"- truncated at max_length {recipe.get('max_length')}: none")
    for source, t in truncated.items():
        lines.append(
            f"- truncated at max_length {recipe.get('max_length')}: {source}: {t['samples']} "
            f"samples, {t['tokens_dropped']} tokens dropped"
        )
    return [*lines, ""]


def _evaluation_section(evaluations: list[CardEvaluation]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not evaluations:
        return [
            *lines,
            "Not evaluated yet: `llava-ablate evaluate model.path=<this directory> "
            "eval/datasets=[...]` adds its results here.",
            "",
        ]
    lines += [
        "Image classification as multiple choice (the same frozen questions for every model; "
        "95% Wilson intervals).",
        "",
        "| dataset | scorer | options | accuracy [95% CI] | questions | hard classes [95% CI] "
        "| question set | from |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in evaluations:
        hard = _ci(e.hard["value"], e.hard["ci_low"], e.hard["ci_high"]) if e.hard else "-"
        lines.append(
            f"| {e.dataset} | {e.scorer} | {e.num_options} | "
            f"{_ci(e.accuracy, e.ci_low, e.ci_high)} | {e.n} | {hard} | "
            f"`{e.fingerprint[:12]}` | {e.source} |"
        )
    return [*lines, ""]


def _ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _count(n: Any) -> str:
    if n is None:
        return "not recorded"
    return f"{int(n):,}"
