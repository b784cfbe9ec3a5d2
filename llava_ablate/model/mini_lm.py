"""mini-LM: the demo's pretrained LLM, a small Qwen2 trained offline on text about the classes.

The paper's LLM axis says a stronger LLM classifies better because what it knows about a class
carries over to images of it. A real pretrained LLM (SmolLM2-135M) costs ~30x a random small one
per sample on a 2-core CPU, so the demo could only compare them at equal CPU time, not on the
same samples. mini-LM removes that confound: it is exactly `llm=small_qwen2`'s model (same
config, tokenizer and chat template, hence the same cost per step), causal-LM trained for a
minute on generated text that describes all 30 mini-classify classes -- what each looks like,
its group, what it is confused with, short question/answer turns in the chat template -- the
10 hard classes included, although the demo's base visual instruction data shows them rarely or
never. Both LLMs then get the same stage-1 and stage-2 samples.

The text never shows an image: everything the mini-LM knows is language. A build records the
fingerprint of its recipe (`build.json`): a changed recipe rebuilds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
from pathlib import Path

import torch
from safetensors.torch import save_model

from llava_ablate.base.files import atomic_write, file_lock
from llava_ablate.base.mcq import LETTERS, lettered_options

log = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the code changes what a build produces
# Intra-op threads while training, whoever calls: a fixed count keeps the weights the same from
# the demo's own step and from a rank that builds it on first use (the other rank waits). One:
# two threads took 2x the CPU time for the same steps on a busy machine (spinning workers).
THREADS = 1

# What each class looks like, in words (mini_classify's class names).
LOOKS = {
    "digit zero": "a handwritten oval loop, closed all round",
    "digit one": "a single handwritten stroke, straight down",
    "digit two": "a handwritten curve on top and a flat stroke at the bottom",
    "digit three": "two handwritten bumps open to the left",
    "digit four": "a handwritten triangle with a stem going down",
    "digit five": "a handwritten flat top, a short stem and a round belly",
    "digit six": "a handwritten loop at the bottom with a curved stem on top",
    "digit seven": "a handwritten flat top bar and a long slanted stroke",
    "digit eight": "two handwritten loops stacked on top of each other",
    "digit nine": "a handwritten loop at the top with a straight stem below",
    "t-shirt": "a short-sleeved top without a collar",
    "trouser": "a garment with two long legs, worn below the waist",
    "pullover": "a long-sleeved knitted top with no buttons",
    "dress": "a one-piece garment that hangs from the shoulders over the legs",
    "coat": "a long-sleeved outer garment, open at the front",
    "sandal": "an open shoe made of thin straps",
    "shirt": "a top with a collar and buttons down the front",
    "sneaker": "a low sports shoe with laces and a flat sole",
    "bag": "a container with a handle, for carrying things",
    "ankle boot": "a closed shoe that covers the foot and the ankle",
    "letter O": "a printed capital letter shaped as an empty ring",
    "letter I": "a printed capital letter made of one straight bar",
    "letter S": "a printed capital letter curving like a snake",
    "letter B": "a printed capital letter with a straight stem and two bumps on the right",
    "letter Z": "a printed capital letter with a top bar, a diagonal and a bottom bar",
    "letter A": "a printed capital letter with two slanted strokes and a cross bar",
    "letter E": "a printed capital letter with a stem and three bars to the right",
    "letter H": "a printed capital letter with two stems joined by a cross bar",
    "letter X": "a printed capital letter made of two crossing diagonals",
    "letter K": "a printed capital letter with a stem and two slanted arms",
}
# Pairs that look alike (mini-classify keeps them on purpose).
CONFUSED = [
    ("digit zero", "letter O"),
    ("digit one", "letter I"),
    ("digit five", "letter S"),
    ("digit eight", "letter B"),
    ("digit two", "letter Z"),
    ("shirt", "t-shirt"),
    ("shirt", "coat"),
    ("pullover", "coat"),
    ("pullover", "shirt"),
    ("sneaker", "sandal"),
    ("sneaker", "ankle boot"),
    ("sandal", "ankle boot"),
]
GROUPS = {"digit": "digit", "clothing": "piece of clothing", "letter": "letter"}
QUESTIONS = [  # asked about a description; the answer is the class name
    "Which object is {looks}?",
    "What do you call {looks}?",
    "Name the object: {looks}.",
]


# Lettered multiple choice (recipe `mcq_share`): a description asks for the class; the
# instruction is the evaluator's (eval.questions.instruction), so the skill meets its format.
MCQ_QUESTIONS = ["Which object is {looks}?", "Which one is the {name}?"]
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def class_names(data_root: Path) -> list[tuple[str, str]]:
    """(name, group) of every mini-classify class, from its classes.csv."""
    with (Path(data_root) / "classes.csv").open(newline="") as fh:
        return [(name, group) for _key, name, group in csv.reader(fh)]


def corpus(
    classes: list[tuple[str, str]], tokenizer, rng: random.Random, n: int, mcq_share: float = 0.0
) -> list[str]:
    """`n` short documents about the classes: plain sentences (the stage-1 caption form among
    them) and chat turns rendered with the tokenizer's own chat template; a `mcq_share` of them
    lettered multiple-choice questions (`mcq_document`)."""
    unknown = sorted({name for name, _ in classes} - set(LOOKS))
    if unknown:
        raise ValueError(f"mini-LM: no description for classes {unknown} (add them to LOOKS)")
    group_of = dict(classes)
    names = [name for name, _ in classes]
    docs = []
    for _ in range(n):
        name = rng.choice(names)
        if mcq_share and rng.random() < mcq_share:  # no draw without: the same corpus as before
            docs.append(mcq_document(name, names, tokenizer, rng))
            continue
        group, looks = GROUPS[group_of[name]], LOOKS[name]
        alike = [b if a == name else a for a, b in CONFUSED if name in (a, b)]
        kind = rng.randrange(6)
        if kind == 0:
            docs.append(f"A {name}. A {name} is {looks}. It is a {group}.")
        elif kind == 1 and alike:
            other = rng.choice(alike)
            docs.append(f"A {name} looks like a {other}, but a {name} is {looks}.")
        elif kind == 2:
            same = [m for m in names if group_of[m] == group_of[name]]
            docs.append(f"Some of the {group}s: " + ", ".join(rng.sample(same, 4)) + ".")
        else:
            turns = [
                (rng.choice(QUESTIONS).format(looks=looks), name),
                (f"What is a {name}?", f"A {name} is {looks}."),
                ("Is it a digit, a letter or a piece of clothing?", f"It is a {group}."),
            ][: 1 + (kind >= 4) + (kind >= 5)]
            messages = []
            for question, answer in turns:
                messages += [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            docs.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return docs


def mcq_document(name: str, names: list[str], tokenizer, rng: random.Random) -> str:
    """A lettered multiple-choice chat turn about `name`, in the evaluator's format (question,
    `A. name` lines, its instruction; the answer is the letter): LLMs learn this format from
    text before they see an image. The number of options varies (2 to all) so the binding of
    a letter to its line is learned on easy cases too; the answer's letter is uniform."""
    k = rng.choice([rng.randint(2, len(names)), len(names)])  # half of them the full 26+
    k = min(k, len(LETTERS))
    options = [name, *rng.sample([m for m in names if m != name], k - 1)]
    rng.shuffle(options)
    question = rng.choice(MCQ_QUESTIONS).format(looks=LOOKS[name], name=name)
    lines = [question, *lettered_options(options), MCQ_INSTRUCTION]
    messages = [
        {"role": "user", "content": "\n".join(lines)},
        {"role": "assistant", "content": LETTERS[options.index(name)]},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def recipe_fingerprint(classes, config: dict, tokenizer, **recipe) -> str:
    blob = {
        "version": RECIPE_VERSION,
        "classes": classes,
        "looks": LOOKS,
        "confused": CONFUSED,
        "questions": QUESTIONS,
        "config": config,
        "vocab": len(tokenizer),
        "chat_template": tokenizer.chat_template,
        **recipe,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _is_current(out: Path, fingerprint: str) -> bool:
    try:
        return json.loads((out / "build.json").read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False  # not built, or a torn file: rebuild


def build_mini_lm(
    out: Path,
    data_root: Path,
    tokenizer,
    config: dict,
    *,
    steps: int,
    batch: int,
    length: int,
    lr: float,
    seed: int,
    mcq_share: float = 0.0,
) -> Path:
    """Causal-LM train a Qwen2 of `config` (llm.config) on the class texts into `out`, unless the
    same recipe is there already; returns `out`. The recipe has no defaults here: its one source
    is `llm.builtin_recipe` (conf/llm/mini_lm.yaml), which the run identity hashes."""
    out = Path(out)
    classes = class_names(data_root)
    recipe = dict(steps=steps, batch=batch, length=length, lr=lr, seed=seed, threads=THREADS)
    if mcq_share:  # absent from the fingerprint when unused: earlier builds stay current
        recipe["mcq_share"] = mcq_share
    fingerprint = recipe_fingerprint(classes, config, tokenizer, **recipe)
    if _is_current(out, fingerprint):
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _train(out, classes, tokenizer, config, fingerprint, **recipe)
    finally:
        torch.set_num_threads(threads)


def _train(out, classes, tokenizer, config, fingerprint, *, steps, batch, length, lr, seed,
           mcq_share=0.0, **_):  # fmt: skip
    from transformers import AutoConfig, AutoModelForCausalLM

    log.info("mini-lm: pre-training on class texts for %d steps (once; cached in %s)", steps, out)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    docs = corpus(classes, tokenizer, rng, n=20000, mcq_share=mcq_share)
    ids, doc_starts = [], []  # one stream, documents separated by eos: windows cross borders
    for doc in tokenizer(docs, add_special_tokens=False).input_ids:
        doc_starts.append(len(ids))
        ids += [*doc, tokenizer.eos_token_id]
    stream = torch.tensor(ids)
    # A lettered question is only learned whole (its answer needs its options): with them,
    # windows start at a document's start; without, anywhere (the recipe before them).
    doc_starts = torch.tensor([s for s in doc_starts if s < len(stream) - length - 1])
    model_config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), **config)
    model = AutoModelForCausalLM.from_config(model_config, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        if mcq_share:
            starts = doc_starts[torch.randint(0, len(doc_starts), (batch,), generator=gen)]
        else:
            starts = torch.randint(0, len(stream) - length - 1, (batch,), generator=gen)
        x = torch.stack([stream[s : s + length] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 20 == 0:
            log.info("mini-lm step %d/%d loss %.3f", step + 1, steps, sum(losses[-20:]) / 20)
    window = max(1, steps // 10)
    training = {
        "steps": steps,
        "tokens_seen": steps * batch * length,
        "corpus_tokens": len(stream),
        "documents": len(docs),
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
    }
    with atomic_write(out) as tmp:  # a changed recipe replaces the old model in one step
        tmp.mkdir(parents=True)
        # Not `save_pretrained`: under torch.distributed it writes weights on rank 0 only, and
        # whichever rank holds the lock trains this.
        save_model(model, str(tmp / "model.safetensors"))
        model.config.save_pretrained(tmp)
        (tmp / "corpus_sample.txt").write_text("\n".join(docs[:40]) + "\n")
        (tmp / "training.json").write_text(json.dumps(training, indent=2))
        (tmp / "build.json").write_text(json.dumps({"fingerprint": fingerprint}))
    log.info("mini-lm: %s", training)
    return out


def generate_builtin_llm(name: str, out: Path, tokenizer, config: dict, **recipe) -> Path:
    """Train built-in LLM `name` into `out` once; mini-classify (whose class names it learns)
    lives next to it and is generated first if needed. Concurrent ranks wait for the one that
    trains. `recipe`: `build_mini_lm`'s keyword arguments (llm.builtin_recipe)."""
    import inspect

    from llava_ablate.data.builtin import generate_builtin

    if name != "mini_lm":
        raise ValueError(f"llm.builtin={name!r}; known: ['mini_lm']")
    params = inspect.signature(build_mini_lm).parameters.values()
    known = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    required = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    unknown, missing = sorted(set(recipe) - set(known)), [k for k in required if k not in recipe]
    if unknown or missing:
        raise ValueError(f"llm.builtin_recipe: unknown key(s) {unknown}, missing {missing}; "
                         f"it takes {known}")  # fmt: skip
    if not str(out) or str(out) == ".":
        raise ValueError("llm.builtin=mini_lm needs llm.pretrained: where to write it")
    data = generate_builtin("mini_classify", out.parent / "mini_classify")
    with file_lock(out.with_suffix(".lock")):
        return build_mini_lm(out, data, tokenizer, config, **recipe)


def name_vectors(cache_dir: Path) -> tuple[list[str], torch.Tensor, str]:
    """The mini-LM's vector of each class name (the mean of its tokens' input embeddings, which
    are tied to the output head) from the `llm=mini_lm` build under `cache_dir`, built first if
    needed: the text side of a tower that shares the LLM's concept space (mini-CLIP's
    `concept: mini_lm`). Returns (names, vectors, the build's fingerprint)."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from llava_ablate.config import CONF_DIR, LLMCfg
    from llava_ablate.model.tokenizer import build_tokenizer

    # The shipped llm=mini_lm node read alone: this runs inside train.py's Hydra app, where
    # composing a second config is refused.
    node = OmegaConf.load(CONF_DIR / "llm" / "mini_lm.yaml")
    node.pretrained = str(Path(cache_dir) / "mini_lm")
    llm = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LLMCfg), node))
    tokenizer = build_tokenizer(llm, cache_dir)
    out = generate_builtin_llm(llm.builtin, Path(llm.pretrained), tokenizer, llm.config,
                               **llm.builtin_recipe)  # fmt: skip
    names = [name for name, _ in class_names(out.parent / "mini_classify")]
    embed = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight.detach()
    ids = tokenizer(names, add_special_tokens=False).input_ids
    vectors = torch.stack([embed[i].mean(0) for i in ids])
    return names, vectors, json.loads((out / "build.json").read_text())["fingerprint"]
