"""lmms-eval hooks of an exported llava-ablate question set: `llava-ablate lmms export-task`
copies this file into each task directory as utils.py (the task YAML's `!function utils.*`).

The import re-scores from the logged responses, so this file decides only lmms-eval's own printed
accuracy, and the `llava_ablate` entry logged with each sample (qid, fingerprint, choice) that
the import checks against the task directory.
"""

import ast
from pathlib import Path

import numpy as np
from PIL import Image

from llava_ablate.base.mcq import LETTERS
from llava_ablate.eval.parse import parse_choice

HERE = Path(__file__).resolve().parent  # the task directory, once copied there


def doc_to_visual(doc):
    with Image.open(HERE / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]  # the exact text our evaluator puts after the image


def doc_to_choice(doc):
    return list(LETTERS[: len(doc["options"])])


def doc_to_target(doc):
    return doc["answer"]


def _logged(doc, letter):
    # Logged with each sample (lmms-eval drops the doc from its log): what the import checks.
    return {"qid": doc["qid"], "fingerprint": doc["fingerprint"], "choice": letter}


def process_generate(doc, results):
    letter = parse_choice(results[0], doc["options"])
    return {"accuracy": float(letter == doc["answer"]), "llava_ablate": _logged(doc, letter)}


def loss(result):
    # (loss, is_greedy); lmms-eval 0.7.3 hands it over as the string "(loss, is_greedy)".
    return float((ast.literal_eval(result) if isinstance(result, str) else result)[0])


def process_choice(doc, results):
    # lmms-eval's LLaVA models return the continuation's loss (mean NLL): the lowest wins, as
    # in lmms-eval's own multiple_choice scoring.
    letter = LETTERS[int(np.argmin([loss(r) for r in results]))]
    return {"accuracy": float(letter == doc["answer"]), "llava_ablate": _logged(doc, letter)}


def count_questions(items):
    return len(items)
