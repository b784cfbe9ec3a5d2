"""`python -m llava_ablate.demo.mini_lm_app llm=mini_lm paths.cache_dir=...`: build the configured
built-in LLM now (the demo's first step) instead of in the first run that uses it. A door of its
own: it composes the config and builds the tokenizer (model.build), which model.mini_lm, imported
by model.build, must not do."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from llava_ablate.config import compose_config, to_object
from llava_ablate.model.build import build_tokenizer
from llava_ablate.model.mini_lm import generate_builtin_llm


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = to_object(compose_config(sys.argv[1:] if argv is None else argv))
    if not cfg.llm.builtin:
        raise SystemExit(f"llm={cfg.llm.name} has no llm.builtin: nothing to build")
    tokenizer = build_tokenizer(cfg.llm, cfg.paths.cache_dir)
    return generate_builtin_llm(cfg.llm.builtin, Path(cfg.llm.pretrained or ""), tokenizer,
                                cfg.llm.config, **cfg.llm.builtin_recipe)  # fmt: skip


if __name__ == "__main__":
    main()
