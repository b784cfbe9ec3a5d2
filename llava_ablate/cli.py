"""`llava-ablate`: every command, on the same Hydra config as train.py.

llava-ablate train +experiment=tiny_align llm=tiny_qwen2   # = python train.py ...
llava-ablate evaluate model.path=runs/<variant>/export    # = python evaluate.py ...
llava-ablate data build data=llava665k llm=vicuna7b      # sources -> shards + manifests
llava-ablate data exposure data=si32m --classes imagenet_names.txt --out exposure.csv
llava-ablate plan llm_x_data                             # a grid's jobs, memory, GPU-hours
llava-ablate launch llm_x_data --dry-run                 # = python -m llava_ablate.launch ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llava_ablate.base.config import config_error_lines, report_config_error
from llava_ablate.config import Config, compose_config, to_object
from llava_ablate.eval.lmms_command import add_lmms_command
from llava_ablate.launch.plan_any import add_plan_command
from llava_ablate.report.command import add_report_command


def _token_length(cfg: Config):
    """Text tokens of a record under the composed LLM's chat template (for manifest stats)."""
    from llava_ablate.data.conversation import tokenize_conversation
    from llava_ablate.model.build import build_tokenizer

    try:
        tokenizer = build_tokenizer(cfg.llm, cfg.paths.cache_dir)
    except OSError as e:
        raise SystemExit(
            f"cannot load the tokenizer of llm={cfg.llm.name} for token statistics ({e}); pass a "
            "local one (llm=... llm.pretrained=/path) or --no-token-stats"
        ) from e
    prompt_format = "plain" if cfg.data.stage == "align" else "chat"

    def length(rec) -> int:
        t = tokenize_conversation(
            rec.id,
            rec.conversations,
            tokenizer,
            prompt_format=prompt_format,
            num_image_tokens=1,
            max_length=10**9,
            overflow="skip",
        )
        return len(t.input_ids) - t.num_images

    return length


def data_build(args) -> None:
    from llava_ablate.data.builtin import generate_builtin
    from llava_ablate.data.shards import build_mixture
    from llava_ablate.model.build import shard_image_side

    cfg = to_object(compose_config(args.overrides))
    if cfg.data.builtin:  # generated offline first, then sharded like any other source
        generate_builtin(cfg.data.builtin, Path(cfg.data.sources[0].path).parent)
    token_length = None if args.no_token_stats else _token_length(cfg)
    side = shard_image_side(cfg.vision, cfg.data.max_image_side, cfg.arch)
    print(
        f"images: {'original bytes' if side is None else f'at most {side} px on the longer side'}"
        f" (data.max_image_side={cfg.data.max_image_side}, vision={cfg.vision.name})"
    )
    manifests = build_mixture(
        cfg.data,
        seed=cfg.train.seed,
        force=args.force,
        token_length=token_length,
        workers=args.workers,
        max_image_side=side,
    )
    width = max(len(n) for n in manifests)
    print(f"{'source':<{width}}  {'samples':>9}  {'skipped':>8}  shards")
    for name, m in manifests.items():
        print(
            f"{name:<{width}}  {m['count']:>9,}  {sum(m['skipped'].values()):>8,}  "
            f"{len(m['shards'])}"
        )
    print(f"shards and manifests under {cfg.data.shards_dir}")


def data_exposure(args) -> None:
    from llava_ablate.data.exposure import (
        exposure_table,
        load_concepts,
        mixture_texts,
        write_exposure,
    )
    from llava_ablate.data.mixture import open_mixture

    cfg = to_object(compose_config(args.overrides))
    mixture = open_mixture(cfg.data, cfg.train.seed)
    rows = exposure_table(mixture_texts(mixture), load_concepts(Path(args.classes)))
    write_exposure(rows, Path(args.out))
    never = sum(1 for r in rows if r["exposure"] == 0)
    print(f"{len(rows)} classes, {never} never mentioned in {mixture.name}; table: {args.out}")


# The Hydra applications take Hydra's own command line (overrides, -m, --cfg job, --help).
HYDRA_APPS = {
    "train": ("llava_ablate.launch.train_app", "train a variant: the overrides train.py takes"),
    "evaluate": ("llava_ablate.launch.evaluate_app", "score a model: what evaluate.py takes"),
}


def main(argv: list[str] | None = None) -> int | None:
    """The exit status (None: 0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HYDRA_APPS:
        import importlib

        app = importlib.import_module(HYDRA_APPS[argv[0]][0])
        return app.run(argv[1:], prog=f"llava-ablate {argv[0]}")
    if argv and argv[0] == "launch":
        from llava_ablate.launch.__main__ import main as launch

        return launch(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="llava-ablate")
    sub = parser.add_subparsers(dest="group", required=True)
    for name, (_, help_text) in HYDRA_APPS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed; dispatched above
    sub.add_parser("launch", help="run a grid (python -m llava_ablate.launch)", add_help=False)
    data = sub.add_parser("data", help="build and inspect data mixtures").add_subparsers(
        dest="command", required=True
    )
    build = data.add_parser("build", help="convert a mixture's sources to webdataset shards")
    build.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=si32m llm=qwen2")
    build.add_argument("--force", action="store_true", help="rebuild sources whose inputs changed")
    build.add_argument("--workers", type=int, default=None, help="processes (data.build_workers)")
    build.add_argument(
        "--no-token-stats",
        action="store_true",
        help="skip token-length statistics (no tokenizer needed)",
    )
    build.set_defaults(func=data_build)
    expo = data.add_parser("exposure", help="per-class concept exposure of a built mixture")
    expo.add_argument("overrides", nargs="*")
    expo.add_argument("--classes", required=True, help="class names (+ synonyms) file")
    expo.add_argument("--out", required=True, help="CSV to write")
    expo.set_defaults(func=data_exposure)
    add_plan_command(sub)
    add_report_command(sub)
    add_lmms_command(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except Exception as error:
        if config_error_lines(error) is None:
            raise  # not a config error: the ordinary traceback
        report_config_error(error)


if __name__ == "__main__":
    sys.exit(main())
