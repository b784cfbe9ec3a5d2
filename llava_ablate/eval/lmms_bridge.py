"""The lmms-eval bridge: our frozen questions as an lmms-eval task, its per-sample logs back as
our predictions.

Export writes one task directory per dataset (pass its parent to lmms-eval's `--include_path`):

  <out>/llava_ablate_<dataset>/
    llava_ablate_<dataset>_generate.yaml  output_type generate_until (free text, OUR parser)
    llava_ablate_<dataset>_choice.yaml    output_type multiple_choice (a log-likelihood per letter)
    utils.py                              doc_to_visual / doc_to_text / process_results
    docs.jsonl                            one doc per question: qid, options, answer, exact prompt
    images/<n>.png                        the exact images our evaluator feeds (lossless)
    question_set.json                     the frozen set itself, with its fingerprint
    bridge.json                           what the import needs: dataset, class names, settings
    skipped.jsonl                         questions left out because their image is unreadable

Import reads lmms-eval's `--log_samples` file (`*_samples_<task>.jsonl`), checks every doc
against the frozen set (same fingerprint, same options and answer per qid, every question
present) and writes an `evaluate.py`-style results directory, re-parsing every generated answer
with `parse_choice`, so `llava-ablate report` pairs it with our runs like any other.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from llava_ablate.base.files import atomic_write
from llava_ablate.base.mcq import LETTERS
from llava_ablate.data.images import pad_to_square
from llava_ablate.eval.datasets import ClassificationDataset, UnreadableImage
from llava_ablate.eval.questions import QuestionSet, mcq_prompt
from llava_ablate.eval.results import summary_entry, write_results, write_summary
from llava_ablate.eval.scoring import Prediction, Skip, Unit, predictions_from_text
from llava_ablate.eval.store import MERGED, SKIPPED
from llava_ablate.eval_config import EvalCfg, QuestionsCfg

BRIDGE_FORMAT = 1
TASK_PREFIX = "llava_ablate"
OUTPUT_TYPES = {"generate": "generate_until", "choice": "multiple_choice"}
# The scorer each output type becomes in our results: `report --scorer` pairs equal names.
DEFAULT_SCORER = {"generate": "generate", "choice": "likelihood"}

# The task's Python side (doc_to_visual, doc_to_text, process_results): a module of ours, copied
# into every task directory as utils.py, which is where lmms-eval's `!function` looks.
TASK_HOOKS = Path(__file__).with_name("lmms_task_hooks.py")


class BridgeError(ValueError):
    """A task directory or an lmms-eval log that does not match the frozen question set."""


@dataclass
class ExportedTask:
    directory: Path  # the task directory (its parent goes to --include_path)
    tasks: dict[str, str]  # kind (generate | choice) -> lmms-eval task name
    fingerprint: str
    n_questions: int
    skipped: list[Skip]


def _slug(dataset: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", dataset.lower()).strip("_")


def task_name(dataset: str, kind: str) -> str:
    """`llava_ablate_<dataset>_<generate|choice>`: the name lmms-eval's --tasks takes."""
    return f"{TASK_PREFIX}_{_slug(dataset)}_{kind}"


def _task_yaml(name: str, kind: str, docs: Path, max_new_tokens: int) -> str:
    task = {
        "task": name,
        # A local JSON-lines file; lmms-eval hands dataset_kwargs to datasets.load_dataset.
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "test_split": "test",
        "output_type": OUTPUT_TYPES[kind],
        "doc_to_visual": "!function utils.doc_to_visual",
        "doc_to_text": "!function utils.doc_to_text",
        "doc_to_target": "!function utils.doc_to_target",
        "process_results": f"!function utils.process_{kind}",
        "metric_list": [
            {"metric": "accuracy", "aggregation": "mean", "higher_is_better": True},
            # Per sample: qid, fingerprint and choice; aggregated: the number of questions.
            {
                "metric": "llava_ablate",
                "aggregation": "!function utils.count_questions",
                "higher_is_better": True,
            },
        ],
        "metadata": {"version": BRIDGE_FORMAT},
    }
    if kind == "choice":
        task["doc_to_choice"] = "!function utils.doc_to_choice"
        task["target_delimiter"] = ""  # the continuation is the bare letter, as our scorer reads it
    else:
        # Greedy, as our `generate` scorer; the same token budget.
        task["generation_kwargs"] = {
            "max_new_tokens": max_new_tokens,
            "temperature": 0,
            "do_sample": False,
        }
    text = yaml.safe_dump(task, sort_keys=False, width=1000)
    # `!function` is a YAML tag lmms-eval resolves to a callable in utils.py: unquote it.
    return re.sub(r"'(!function [^']+)'", r"\1", text)


def export_task(
    qset: QuestionSet,
    dataset: ClassificationDataset,
    qcfg: QuestionsCfg,
    out_dir: Path,
    *,
    max_new_tokens: int = 16,
    pad_fill: tuple[int, int, int] | None = None,
) -> ExportedTask:
    """Write the lmms-eval task directory of `qset` under `out_dir` (replacing an older one).

    `pad_fill`: pad every image to a square of this colour first (our evaluator's
    `model.image_aspect=pad` with that model's processor mean); None exports the images as read
    (`native`). lmms-eval's models take the image as it is, so this is where padding must happen.
    """
    if qset.dataset != dataset.name:
        raise BridgeError(f"question set of {qset.dataset!r} given with dataset {dataset.name!r}")
    directory = Path(out_dir) / f"{TASK_PREFIX}_{_slug(qset.dataset)}"
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    samples = dataset.by_id()
    fingerprint = qset.fingerprint()
    docs, skipped = [], []
    for i, q in enumerate(qset.questions):
        if q.sample_id not in samples:
            raise BridgeError(f"{q.qid}: sample {q.sample_id} is not in dataset {dataset.name}")
        try:
            image = dataset.load_image(samples[q.sample_id])
        except UnreadableImage as e:
            skipped.append(Skip(q.qid, e.reason, e.image, e.detail))
            continue
        if pad_fill is not None:
            image = pad_to_square(image, pad_fill)
        rel = f"images/{i:06d}.png"
        image.save(staging / rel)  # PNG: lossless, the pixels our evaluator sees
        docs.append(
            {
                "qid": q.qid,
                "sample_id": q.sample_id,
                "label": q.label,
                "options": q.options,
                "answer": q.answer,
                "prompt": mcq_prompt(q, qcfg),
                "image": rel,
                "fingerprint": fingerprint,
            }
        )
    if not docs:
        raise BridgeError(f"{dataset.name}: every image is unreadable; nothing to export")
    with open(staging / "docs.jsonl", "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc) + "\n")
    with open(staging / SKIPPED, "w", encoding="utf-8") as fh:
        for s in skipped:
            fh.write(json.dumps(asdict(s)) + "\n")
    qset.save(staging / "question_set.json")
    shutil.copyfile(TASK_HOOKS, staging / "utils.py")
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)  # the YAML names docs.jsonl by its final, absolute path
    tasks = {kind: task_name(qset.dataset, kind) for kind in OUTPUT_TYPES}
    for kind, name in tasks.items():
        text = _task_yaml(name, kind, directory / "docs.jsonl", max_new_tokens)
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    bridge = {
        "format": BRIDGE_FORMAT,
        "dataset": dataset.name,
        "classnames": dataset.classnames,
        "fingerprint": fingerprint,
        "tasks": tasks,
        "question": qcfg.question,
        "instruction": qcfg.instruction,
        "image_aspect": "native" if pad_fill is None else "pad",
        "pad_fill": list(pad_fill) if pad_fill is not None else None,
        "max_new_tokens": max_new_tokens,
        "n_questions": len(qset.questions),
        "n_skipped": len(skipped),
    }
    (directory / "bridge.json").write_text(json.dumps(bridge, indent=2), encoding="utf-8")
    return ExportedTask(directory, tasks, fingerprint, len(docs), skipped)


@dataclass
class TaskDir:
    """An exported task directory, read back."""

    directory: Path
    info: dict  # bridge.json
    qset: QuestionSet
    skipped: list[Skip]


def read_task_dir(directory: Path) -> TaskDir:
    directory = Path(directory)
    bridge = directory / "bridge.json"
    if not bridge.exists():
        raise BridgeError(
            f"{bridge} is missing: pass the directory `llava-ablate lmms export-task` wrote "
            f"(llava_ablate_<dataset>/)"
        )
    info = json.loads(bridge.read_text("utf-8"))
    if info.get("format") != BRIDGE_FORMAT:
        raise BridgeError(f"{bridge}: format {info.get('format')}, expected {BRIDGE_FORMAT}")
    qset = QuestionSet.load(directory / "question_set.json")
    if qset.fingerprint() != info["fingerprint"]:
        raise BridgeError(
            f"{directory}/question_set.json has fingerprint {qset.fingerprint()}, but bridge.json "
            f"says {info['fingerprint']}: the task directory was edited; export it again"
        )
    skipped_file = directory / SKIPPED
    skipped = []
    if skipped_file.exists():
        skipped = [Skip(**json.loads(x)) for x in skipped_file.read_text("utf-8").splitlines() if x]
    return TaskDir(directory, info, qset, skipped)


@dataclass
class LoggedSample:
    qid: str
    kind: str  # generate | choice
    response: str | list[float]  # the generated text, or one loss per letter


def _loss(value, where: str) -> float:
    """The loss of one option: a (loss, is_greedy) pair, or its string (lmms-eval 0.7.3)."""
    try:
        pair = ast.literal_eval(value) if isinstance(value, str) else value
        return float(pair[0])
    except (ValueError, SyntaxError, TypeError, IndexError) as e:
        raise BridgeError(f"{where}: unrecognised option result {value!r}") from e


def _response(row: dict, where: str) -> tuple[str, str | list[float]]:
    """(kind, response) of one logged sample: the generated text (generate_until) or one loss
    per option (multiple_choice)."""
    resps = row.get("filtered_resps", row.get("resps"))
    while isinstance(resps, list) and len(resps) == 1 and isinstance(resps[0], (str, list)):
        resps = resps[0]  # generate_until: "text", ["text"] or [["text"]], by version
    if isinstance(resps, str):
        return "generate", resps
    if isinstance(resps, list) and resps:
        return "choice", [_loss(r, where) for r in resps]
    raise BridgeError(f"{where}: no `filtered_resps` (is this an lmms-eval --log_samples file?)")


def _docs(task: TaskDir) -> list[dict]:
    return [json.loads(x) for x in (task.directory / "docs.jsonl").read_text("utf-8").splitlines()]


def read_samples(path: Path, task: TaskDir) -> list[LoggedSample]:
    """lmms-eval's per-sample log, every sample checked against the frozen set of `task`.

    lmms-eval drops the doc from its log; our process_results logs `llava_ablate` = {qid,
    fingerprint, choice} with each sample, and lmms-eval keeps `doc_id` (the row of docs.jsonl),
    `input` (the prompt) and `target` (the answer letter): all four must match."""
    path = Path(path)
    if not path.exists():
        raise BridgeError(f"{path} does not exist (lmms-eval writes it with --log_samples)")
    want = task.info["fingerprint"]
    by_qid = {q.qid: q for q in task.qset.questions}
    docs = _docs(task)
    out: dict[str, LoggedSample] = {}
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BridgeError(f"{where}: not JSON ({e})") from e
        ours = row.get("llava_ablate")
        if not isinstance(ours, dict) or "qid" not in ours:
            raise BridgeError(
                f"{where}: no `llava_ablate` entry; not the log of a task `llava-ablate lmms "
                "export-task` wrote"
            )
        if ours.get("fingerprint") != want:
            raise BridgeError(
                f"{where}: question set {ours.get('fingerprint')}, but {task.directory} holds "
                f"{want}: different questions cannot be paired; import it with its own task dir"
            )
        qid, doc_id = ours["qid"], row.get("doc_id")
        q = by_qid.get(qid)
        doc = docs[doc_id] if isinstance(doc_id, int) and 0 <= doc_id < len(docs) else {}
        if (
            q is None
            or doc.get("qid") != qid
            or row.get("input", doc.get("prompt")) != doc.get("prompt")
            or str(row.get("target", q.answer)) != q.answer
        ):
            raise BridgeError(f"{where}: {qid} (doc {doc_id}) differs from {task.directory}")
        kind, response = _response(row, where)
        if kind == "choice" and len(response) != len(q.options):
            raise BridgeError(f"{where}: {len(response)} losses for {len(q.options)} options")
        if qid in out:
            raise BridgeError(f"{where}: {qid} appears twice")
        out[qid] = LoggedSample(qid, kind, response)
    if len({s.kind for s in out.values()}) > 1:
        raise BridgeError(f"{path} mixes generate and multiple-choice samples; import one task")
    expected = set(by_qid) - {s.qid for s in task.skipped}
    missing = sorted(expected - set(out))
    if missing:
        raise BridgeError(
            f"{path} has {len(out)} of {len(expected)} questions (missing e.g. {missing[:3]}); "
            "run lmms-eval on the whole task (no --limit)"
        )
    return [out[q.qid] for q in task.qset.questions if q.qid in out]


def predictions_from_log(
    task: TaskDir, samples: list[LoggedSample], scorer: str
) -> list[Prediction]:
    """Our predictions: generated text through `parse_choice`; losses -> the lowest letter."""
    by_qid = {q.qid: q for q in task.qset.questions}
    preds = []
    for s in samples:
        q = by_qid[s.qid]
        if s.kind == "generate":
            (p,) = predictions_from_text([Unit(q)], [s.response])
            p.scorer = scorer
        else:
            scores = -np.asarray(s.response, dtype=np.float64)  # loss -> higher is better
            best = int(np.argmax(scores))  # ties: the earliest letter, as our scorer
            p = Prediction(q.qid, scorer, 0, q.label, q.answer, LETTERS[best], q.options[best],
                           best == q.answer_index, json.dumps(s.response))  # fmt: skip
        preds.append(p)
    return preds


def import_samples(
    samples_file: Path,
    task_dir: Path,
    out_dir: Path,
    ecfg: EvalCfg,
    *,
    model_name: str = "lmms-eval",
    scorer: str | None = None,
    provenance: dict | None = None,
) -> dict:
    """Write `<out_dir>/<dataset>/` (predictions, metrics, per-class, skips) from an lmms-eval
    log; returns the dataset's metrics."""
    task = read_task_dir(task_dir)
    samples = read_samples(samples_file, task)
    kind = samples[0].kind
    scorer = scorer or DEFAULT_SCORER[kind]
    preds = predictions_from_log(task, samples, scorer)
    dataset = ClassificationDataset(task.info["dataset"], task.info["classnames"], [])
    ds_dir = Path(out_dir) / dataset.name
    ds_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(ds_dir / MERGED) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for p in preds:
            fh.write(json.dumps(asdict(p)) + "\n")
    with atomic_write(ds_dir / SKIPPED) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for s in task.skipped:
            fh.write(json.dumps(asdict(s)) + "\n")
    lmms_eval = {
        "samples": str(samples_file),
        "task": task.info["tasks"][kind],
        "output_type": OUTPUT_TYPES[kind],
        "scoring": "our parse_choice on the generated text"
        if kind == "generate"
        else "the letter whose continuation has the lowest loss (lmms-eval's multiple_choice)",
        **(provenance or {}),
    }
    metrics = write_results(ds_dir, dataset, task.qset, preds, ecfg, [scorer], model=model_name,
                            skipped=task.skipped, image_aspect=task.info.get("image_aspect"),
                            compare_to=ecfg.stats.compare_to,
                            extra={"lmms_eval": lmms_eval}).metrics  # fmt: skip
    write_summary(Path(out_dir), model_name, {dataset.name: summary_entry(metrics)})
    return metrics


def load_image_fill(processor_path: str) -> tuple[int, int, int]:
    """The padding colour our evaluator uses for the model at `processor_path`."""
    from transformers import AutoImageProcessor

    from llava_ablate.data.images import mean_colour

    return mean_colour(AutoImageProcessor.from_pretrained(processor_path))
