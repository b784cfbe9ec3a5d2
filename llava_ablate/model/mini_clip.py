"""mini-CLIP: the demo's vision tower, pre-trained contrastively offline the way real towers are.

LLaVA starts from a CLIP tower that already tells concepts apart; a random-init tower has to
learn vision through the LLM's next-token loss, which on a CPU budget leaves it unable to tell
a digit three from a seven. So the demo does what OpenAI did, in miniature: a tiny CLIP (image
tower + text tower, transformers' `CLIPModel` and its own contrastive loss) is trained on
captions of mini-classify's *base* training images (common + rare classes; the absent classes
are never shown, so the data axis stays intact). The directory it writes is a full CLIP
checkpoint: `CLIPVisionModel.from_pretrained` reads the tower for LLaVA, `CLIPModel` the pair for
the zero-shot baseline.

Batches hold distinct classes (one image each): with repeated captions in a batch, the
contrastive targets would call the same caption both right and wrong.

The saved text tower has CLIP's 77 positions, so zero-shot prompts longer than the training
captions (absent classes, other datasets' names) fit. It trains with as many positions as the
longest caption (the training is the same as before the room was added) and the untrained
positions past it are appended after training, as copies of the last trained one. A build records the fingerprint of its recipe (`build.json`): a changed recipe rebuilds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_model
from tokenizers.processors import TemplateProcessing

from llava_ablate.base.files import atomic_write, file_lock

log = logging.getLogger(__name__)

CAPTION = "a photo of a {name}."
TOWER = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
TEXT = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2}
TEXT |= {"num_attention_heads": 4}
TEXT_POSITIONS = 77  # CLIP's context length
RECIPE_VERSION = 2  # bump when the training code changes what a build produces


def caption_tokenizer(cache_dir: Path):
    """The project's tiny BPE tokenizer, appending eos: CLIP pools the text at its eos, so the
    zero-shot baseline's prompts end the way the training captions did."""
    from llava_ablate.model.tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer(Path(cache_dir) / "tokenizers" / "tiny-qwen2", "qwen2")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {tok.eos_token}", special_tokens=[(tok.eos_token, tok.eos_token_id)]
    )
    tok.model_max_length = TEXT_POSITIONS
    return tok


def text_config(tok, max_positions: int = TEXT_POSITIONS):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        **TEXT,
        max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,  # pooled at the eos, not at argmax(ids)
    )


def recipe_fingerprint(data_root: Path, **recipe) -> str:
    """What a build depends on: the code's version, the configs, the training options and the
    class names it is trained on."""
    blob = {
        "version": RECIPE_VERSION,
        "tower": TOWER,
        "text": TEXT,
        "text_positions": TEXT_POSITIONS,
        "caption": CAPTION,
        "classes": (data_root / "classes.csv").read_text("utf-8"),
        **recipe,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _is_current(out: Path, fingerprint: str) -> bool:
    if not (out / "config.json").is_file():
        return False
    try:
        return json.loads((out / "build.json").read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False  # built before fingerprints, or a torn file: rebuild


def _folders(root: Path, splits: tuple[str, ...]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for split in splits:
        for folder in sorted((root / split).iterdir()):
            out.setdefault(folder.name, []).extend(sorted(folder.glob("*.png")))
    return out


def build_mini_clip(
    out: Path,
    data_root: Path,
    *,
    splits: tuple[str, ...] = ("train_common", "train_rare"),
    steps: int = 600,
    lr: float = 1e-3,
    seed: int = 0,
    concept: ConceptTargets | None = None,
) -> Path:
    """Train the mini-CLIP into `out` unless the same recipe is there already; returns `out`.
    With `concept`, the features LLaVA reads are also pulled onto an LLM's vectors of the class
    names (`concept_loss`)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPVisionConfig,
    )

    out = Path(out)
    extra = {"concept": concept.fingerprint} if concept else {}  # absent: earlier builds hold
    fingerprint = recipe_fingerprint(
        data_root, splits=list(splits), steps=steps, lr=lr, seed=seed, **extra
    )
    if _is_current(out, fingerprint):
        return out
    if (out / "config.json").is_file():
        log.info("mini-clip at %s was built from another recipe: rebuilding", out)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    names = {row[0]: row[1] for row in csv.reader((data_root / "classes.csv").open())}
    images = _folders(data_root, splits)
    keys = sorted(images)
    tok = caption_tokenizer(out.parent)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": TOWER["image_size"]}, crop_size=TOWER["image_size"]
    )
    captions = [CAPTION.format(name=names[k]) for k in keys]
    text = tok(captions, padding=True, return_tensors="pt")
    config = CLIPConfig(
        text_config=text_config(tok, text.input_ids.shape[1]).to_dict(),
        vision_config=CLIPVisionConfig(**TOWER).to_dict(),
        projection_dim=64,
    )
    model = CLIPModel(config)
    pixels = {
        k: processor(
            images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt"
        ).pixel_values
        for k, paths in images.items()
    }
    head = ConceptHead(TOWER["hidden_size"], concept, [names[k] for k in keys]) if concept else None
    params = [*model.parameters(), *(head.parameters() if head else [])]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses, concept_losses = [], []
    for step in range(steps):
        picked = list(range(len(keys)))  # every class once, a random image of each
        batch = torch.stack([pixels[keys[i]][rng.randrange(len(pixels[keys[i]]))] for i in picked])
        output = model(
            input_ids=text.input_ids,
            attention_mask=text.attention_mask,
            pixel_values=batch,
            return_loss=True,
            output_hidden_states=head is not None,
        )
        loss = output.loss
        if head is not None:
            aligned = head.loss(output.vision_model_output.hidden_states)
            concept_losses.append(aligned.item())
            loss = loss + aligned
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log.info("mini-clip step %d loss %.3f", step + 1, np.mean(losses[-100:]))
    _add_text_positions(model, TEXT_POSITIONS)
    window = max(1, steps // 10)
    training = {
        "steps": steps,
        "classes": len(keys),
        "images": sum(len(v) for v in images.values()),
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
    }
    if concept_losses:  # the alignment to the LLM's name vectors alone
        training["concept_loss_first"] = float(np.mean(concept_losses[:window]))
        training["concept_loss_last"] = float(np.mean(concept_losses[-window:]))
    with atomic_write(out) as tmp:  # a changed recipe replaces the old tower in one step
        tmp.mkdir(parents=True)
        # Not `save_pretrained`: under torch.distributed it writes weights on rank 0 only, and
        # whichever rank holds the lock trains this.
        save_model(model, str(tmp / "model.safetensors"))
        model.config.save_pretrained(tmp)
        CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(tmp)
        (tmp / "classes.txt").write_text("".join(f"{names[k]}\n" for k in keys))
        (tmp / "training.json").write_text(json.dumps(training, indent=2))
        (tmp / "build.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return out


@dataclass(frozen=True)
class ConceptTargets:
    """An LLM's vector for each class name (rows: `names`), which the tower's features are
    pulled onto, and what identifies them (the LLM's build) for the tower's fingerprint."""

    names: list[str]
    vectors: torch.Tensor
    fingerprint: str


class ConceptHead(torch.nn.Module):
    """LiT-style alignment to a locked text side: a linear map from the mean patch feature of
    LLaVA's layer (-2; CLS dropped, as `select_strategy: default`) onto the LLM's name vectors,
    trained with the contrastive loss over a batch's classes (one image each)."""

    def __init__(self, width: int, concept: ConceptTargets, batch_names: list[str]):
        super().__init__()
        rows = [concept.names.index(n) for n in batch_names]
        self.register_buffer("targets", F.normalize(concept.vectors[rows].float(), dim=-1))
        self.proj = torch.nn.Linear(width, self.targets.shape[1])
        self.log_scale = torch.nn.Parameter(torch.tensor(2.3))  # ~ temperature 0.1

    def loss(self, hidden_states) -> torch.Tensor:
        feats = F.normalize(self.proj(hidden_states[-2][:, 1:].mean(1)), dim=-1)
        logits = self.log_scale.exp() * feats @ self.targets.T
        return F.cross_entropy(logits, torch.arange(len(logits)))


def _add_text_positions(model, positions: int) -> None:
    """Give the text tower `positions` positions; the new ones copy the last trained one."""
    emb = model.text_model.embeddings
    trained = emb.position_embedding.weight.data
    if trained.shape[0] >= positions:
        return
    room = torch.nn.Embedding(positions, trained.shape[1])
    with torch.no_grad():
        room.weight[: trained.shape[0]] = trained
        room.weight[trained.shape[0] :] = trained[-1]
    emb.position_embedding = room
    emb.position_ids = torch.arange(positions).expand((1, -1))
    model.config.text_config.max_position_embeddings = positions
    model.text_model.config.max_position_embeddings = positions


# The tower's designs (vision.builtin_recipe): which classes it is pre-trained on, and whether
# its features are also aligned to the demo's mini-LM (a shared concept space).
SPLITS = {"base": ("train_common", "train_rare"), "all": ("train_common", "train_extra")}
CONCEPTS = ("none", "mini_lm")


def generate_builtin_tower(
    name: str, out: Path, classes: str = "base", concept: str = "none"
) -> Path:
    """Train built-in tower `name` into `out` once; mini-classify (its data) lives next to it and
    is generated first if needed, as is the mini-LM with `concept=mini_lm`. Concurrent ranks
    wait for the one that trains."""
    from llava_ablate.data.builtin import generate_builtin

    if name != "mini_clip":
        raise ValueError(f"vision.builtin={name!r}; known: ['mini_clip']")
    if classes not in SPLITS or concept not in CONCEPTS:
        raise ValueError(f"vision.builtin_recipe: classes={classes!r} (one of {list(SPLITS)}), "
                         f"concept={concept!r} (one of {list(CONCEPTS)})")  # fmt: skip
    if not str(out) or str(out) == ".":
        raise ValueError("vision.builtin=mini_clip needs vision.pretrained: where to write it")
    data = generate_builtin("mini_classify", out.parent / "mini_classify")
    targets = None
    if concept == "mini_lm":
        from llava_ablate.model.mini_lm import name_vectors

        targets = ConceptTargets(*name_vectors(out.parent))
    with file_lock(out.with_suffix(".lock")):
        return build_mini_clip(out, data, splits=SPLITS[classes], concept=targets)
