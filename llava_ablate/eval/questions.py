"""Multiple-choice question sets, built once per (dataset, strategy, seed) and frozen to JSON.

Every model is scored on the identical file. A question is the image's true class plus k-1
distractors, lettered A.. in order. The true letter is balanced: positions are a shuffled
round-robin over the k letters, so each letter is the answer n/k times (+-1) and position bias
is measurable rather than confounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llava_ablate.base.files import atomic_write
from llava_ablate.base.mcq import LETTERS, lettered_options
from llava_ablate.eval.datasets import ClassificationDataset
from llava_ablate.eval_config import QuestionsCfg

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class Question:
    qid: str  # "<dataset>/<sample id>": the unit of resume and of paired comparison
    sample_id: str
    label: str  # the true class name
    options: list[str]
    answer: str  # the true option's letter

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    def rotated(self, shift: int) -> Question:
        """The same question with its options cycled `shift` places (answer follows)."""
        k = len(self.options)
        options = [self.options[(i - shift) % k] for i in range(k)]
        return Question(
            self.qid, self.sample_id, self.label, options, LETTERS[options.index(self.label)]
        )


@dataclass
class QuestionSet:
    dataset: str
    strategy: str  # random | hard | image | file
    seed: int
    num_options: int
    encoder: str | None = None  # hard / image: which encoder ranked the names
    subsample: dict = field(default_factory=dict)
    questions: list[Question] = field(default_factory=list)
    version: int = FORMAT_VERSION
    nested_in: str | None = None  # the fingerprint of the set whose options this one keeps

    def fingerprint(self) -> str:
        """A content hash: two runs are comparable (paired) only on equal fingerprints."""
        blob = json.dumps([asdict(q) for q in self.questions], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**asdict(self), "fingerprint": self.fingerprint()}
        with atomic_write(path) as tmp:  # concurrent readers never see half a file
            tmp.write_text(json.dumps(data, indent=0), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> QuestionSet:
        data = json.loads(Path(path).read_text("utf-8"))
        data.pop("fingerprint", None)
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: question-set format {data.get('version')}, expected 1")
        data["questions"] = [Question(**q) for q in data["questions"]]
        return cls(**data)


def mcq_prompt(question: Question, qcfg: QuestionsCfg) -> str:
    """The text after the image: question, lettered options, instruction (LLaVA's MCQ format)."""
    lines = [qcfg.question]
    lines += lettered_options(question.options)
    lines.append(qcfg.instruction)
    return "\n".join(lines)


def balanced_positions(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n answer positions: each letter n//k times, the n%k left-over letters drawn at random
    (not A, B, C...: that would make early letters likelier), then shuffled."""
    positions = np.concatenate(
        [np.tile(np.arange(k), n // k), rng.choice(k, size=n % k, replace=False)]
    )
    rng.shuffle(positions)
    return positions


def _rng(seed: int, dataset: str) -> np.random.Generator:
    # Seeded per dataset so adding a dataset never changes another's questions.
    return np.random.default_rng([seed, zlib.crc32(dataset.encode())])


DistractorFn = Callable[[int, str, int, np.random.Generator], list[str]]


def random_distractors(classnames: list[str]) -> DistractorFn:
    def pick(label: int, sample_id: str, m: int, rng: np.random.Generator) -> list[str]:
        others = rng.choice(len(classnames) - 1, size=m, replace=False)
        return [classnames[i + (i >= label)] for i in others]  # skip the true class

    return pick


def hard_distractors(classnames: list[str], embeddings: np.ndarray, pool: int) -> DistractorFn:
    """The m most similar names (cosine), or m drawn from the `pool` most similar."""
    sim = embeddings @ embeddings.T
    np.fill_diagonal(sim, -np.inf)
    # A stable sort on (-sim, index) keeps ties deterministic.
    ranked = np.argsort(-sim, axis=1, kind="stable")

    def pick(label: int, sample_id: str, m: int, rng: np.random.Generator) -> list[str]:
        if pool > m:
            chosen = rng.choice(ranked[label, :pool], size=m, replace=False)
        else:
            chosen = ranked[label, :m].copy()
            rng.shuffle(chosen)  # the order must not reveal the similarity rank
        return [classnames[i] for i in chosen]

    return pick


def image_distractors(classnames: list[str], ranked: dict[str, np.ndarray | None]) -> DistractorFn:
    """The m classes an image tower finds most similar to this very image (FOCI's image-level
    confusions), in a random order; an image it could not read gets random distractors (its
    question is skipped when scored)."""
    fallback = random_distractors(classnames)

    def pick(label: int, sample_id: str, m: int, rng: np.random.Generator) -> list[str]:
        order = ranked.get(sample_id)
        if order is None:
            return fallback(label, sample_id, m, rng)
        chosen = [int(i) for i in order if i != label][:m]
        rng.shuffle(chosen)  # the order must not reveal the similarity rank
        return [classnames[i] for i in chosen]

    return pick


def file_distractors(path: str, classnames: list[str]) -> DistractorFn:
    """JSON `{class name: [distractors]}`, or JSONL lines `{"sample_id", "options"}`."""
    text = Path(path).read_text("utf-8")
    try:
        per_class = json.loads(text)
        per_sample: dict = {}
        if not isinstance(per_class, dict):
            raise ValueError
    except (json.JSONDecodeError, ValueError):
        per_class = {}
        per_sample = {}
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                per_sample[str(row["sample_id"])] = row["options"]

    def pick(label: int, sample_id: str, m: int, rng: np.random.Generator) -> list[str]:
        given = per_sample.get(sample_id, per_class.get(classnames[label]))
        if given is None:
            raise KeyError(f"{path}: no options for sample {sample_id} / class {classnames[label]}")
        distractors = [o for o in dict.fromkeys(given) if o != classnames[label]][:m]
        if not distractors:
            raise ValueError(f"{path}: sample {sample_id} has no distractor besides its label")
        rng.shuffle(distractors)
        return distractors

    return pick


def build_question_set(
    dataset: ClassificationDataset,
    qcfg: QuestionsCfg,
    encoder=None,  # TextEncoder, for `hard`
    subsample: dict | None = None,
    rank_images=None,  # for `image`: eval/image_confusions.image_rankings (passed in: it loads a tower)
) -> QuestionSet:
    k = min(qcfg.num_options, len(dataset.classnames))
    if k < 2:
        raise ValueError(f"{dataset.name}: needs at least 2 classes for a multiple choice")
    rng = _rng(qcfg.seed, dataset.name)
    encoder_name = None
    if qcfg.distractors == "random":
        pick = random_distractors(dataset.classnames)
    elif qcfg.distractors == "hard":
        if encoder is None:
            from llava_ablate.eval.text_encoders import build_text_encoder

            encoder = build_text_encoder(qcfg.encoder, qcfg.hard_encoder_path)
        encoder_name = encoder.name
        pick = hard_distractors(
            dataset.classnames, encoder.embed(dataset.classnames), qcfg.hard_pool
        )
    elif qcfg.distractors == "image":
        if rank_images is None:
            raise ValueError(
                "eval.questions.distractors=image: the caller passes the image ranker "
                "(llava_ablate.eval.image_confusions.image_rankings)"
            )
        encoder_name = qcfg.image_encoder
        pick = image_distractors(dataset.classnames, rank_images(dataset, str(qcfg.image_encoder)))
    elif qcfg.distractors == "file":
        pick = file_distractors(qcfg.options_file, dataset.classnames)
    else:
        raise ValueError(
            f"eval.questions.distractors={qcfg.distractors!r}: random | hard | image | file"
        )
    positions = balanced_positions(len(dataset.samples), k, rng)
    questions = []
    for sample, pos in zip(dataset.samples, positions, strict=True):
        true = dataset.classnames[sample.label]
        distractors = pick(sample.label, sample.id, k - 1, rng)
        pos = min(int(pos), len(distractors))  # `file` may give fewer distractors
        options = distractors[:pos] + [true] + distractors[pos:]
        questions.append(
            Question(f"{dataset.name}/{sample.id}", sample.id, true, options, LETTERS[pos])
        )
    log.info(
        "%s: %d questions, %d options, distractors=%s%s, seed=%d",
        dataset.name,
        len(questions),
        k,
        qcfg.distractors,
        f" ({encoder_name})" if encoder_name else "",
        qcfg.seed,
    )
    return QuestionSet(
        dataset.name, qcfg.distractors, qcfg.seed, k, encoder_name, subsample or {}, questions
    )


def nested_question_set(frozen: QuestionSet, k: int) -> QuestionSet:
    """The k-option version of `frozen`: each question keeps its true class and its first k-1
    distractors (in option order), so accuracies at different k are paired question by
    question; the true letter is balanced over the k positions again (seeded by k)."""
    if k >= frozen.num_options:
        return frozen
    rng = np.random.default_rng([frozen.seed, zlib.crc32(frozen.dataset.encode()), k])
    positions = balanced_positions(len(frozen.questions), k, rng)
    questions = []
    for q, pos in zip(frozen.questions, positions, strict=True):
        distractors = [o for o in q.options if o != q.label][: k - 1]
        pos = min(int(pos), len(distractors))
        options = distractors[:pos] + [q.label] + distractors[pos:]
        questions.append(Question(q.qid, q.sample_id, q.label, options, LETTERS[pos]))
    return QuestionSet(frozen.dataset, frozen.strategy, frozen.seed, k, frozen.encoder,
                       frozen.subsample, questions, nested_in=frozen.fingerprint())  # fmt: skip


def question_set_path(directory: Path, dataset: str, qcfg: QuestionsCfg, subsample: dict) -> Path:
    tag = "-".join(f"{k}{v}" for k, v in sorted(subsample.items()) if v is not None) or "all"
    # Whatever else decides the options goes into the name too, hashed.
    source = {
        "hard": f"{qcfg.encoder}|{qcfg.hard_encoder_path}|{qcfg.hard_pool}",
        "image": str(qcfg.image_encoder),
        "file": str(qcfg.options_file),
    }.get(qcfg.distractors)
    if source:
        tag += "-" + hashlib.sha256(source.encode()).hexdigest()[:8]
    name = f"{dataset}-{qcfg.distractors}-k{qcfg.num_options}-s{qcfg.seed}-{tag}.json"
    return Path(directory) / name


def frozen_question_set(
    dataset: ClassificationDataset,
    qcfg: QuestionsCfg,
    directory: Path,
    subsample: dict,
    rank_images=None,  # see build_question_set
) -> QuestionSet:
    """Load the frozen set for this configuration, or build and freeze it."""
    path = question_set_path(directory, dataset.name, qcfg, subsample)
    if path.exists():
        qs = QuestionSet.load(path)
        known = {s.id for s in dataset.samples}
        missing = [q.sample_id for q in qs.questions if q.sample_id not in known]
        if missing:
            raise ValueError(
                f"{path} refers to samples missing from the dataset ({missing[:3]}...); "
                "delete it to rebuild, or point eval.questions.dir elsewhere"
            )
        log.info("%s: using the frozen question set %s (%s)", dataset.name, path, qs.fingerprint())
        return qs
    qs = build_question_set(dataset, qcfg, subsample=subsample, rank_images=rank_images)
    qs.save(path)
    log.info("%s: froze the question set to %s (%s)", dataset.name, path, qs.fingerprint())
    return qs
