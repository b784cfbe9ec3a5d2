"""`llava-ablate lmms export-task|import`: the lmms-eval bridge's two doors (lmms_bridge.py).

llava-ablate lmms export-task --out lmms_tasks eval/datasets=[imagenet] eval=hard
python -m lmms_eval --model llava_hf --model_args pretrained=runs/x/export \\
    --tasks llava_ablate_imagenet_generate --include_path lmms_tasks --log_samples --output_path o
llava-ablate lmms import --samples o/<model>/<date>_samples_llava_ablate_imagenet_generate.jsonl \\
    --task-dir lmms_tasks/llava_ablate_imagenet --out results/x-lmms
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from llava_ablate.config import compose_config
from llava_ablate.eval_config import EvalCfg, register_eval_configs


def _eval_cfg(overrides: list[str]) -> EvalCfg:
    """`eval` of evaluate.py's config with these overrides (no model needed)."""
    register_eval_configs()
    cfg = compose_config(overrides, "evaluate")
    ecfg = OmegaConf.to_object(cfg.eval)
    assert isinstance(ecfg, EvalCfg)
    return ecfg


def export_command(args: argparse.Namespace) -> None:
    from llava_ablate.eval.image_confusions import image_rankings
    from llava_ablate.eval.layouts import load_dataset
    from llava_ablate.eval.lmms_bridge import export_task, load_image_fill
    from llava_ablate.eval.questions import frozen_question_set

    ecfg = _eval_cfg(args.overrides)
    names = args.dataset or list(ecfg.datasets)
    unknown = sorted(set(names) - set(ecfg.datasets))
    if unknown:
        raise SystemExit(f"--dataset {unknown}: not in eval.datasets ({sorted(ecfg.datasets)})")
    fill = load_image_fill(args.pad_fill_from) if args.pad_fill_from else None
    qdir = Path(ecfg.questions.dir or "results/questions")
    for name in names:
        dcfg = ecfg.datasets[name]
        dataset = load_dataset(name, dcfg, ecfg.questions.seed)
        sub = {"per_class": dcfg.per_class, "total": dcfg.total}
        # The same frozen file evaluate.py reads (built and frozen here if it is the first).
        qset = frozen_question_set(dataset, ecfg.questions, qdir, sub, image_rankings)
        task = export_task(qset, dataset, ecfg.questions, Path(args.out),
                           max_new_tokens=ecfg.scoring.max_new_tokens, pad_fill=fill)  # fmt: skip
        print(f"{task.directory}: {task.n_questions} questions (question set {task.fingerprint}, "
              f"{len(task.skipped)} unreadable images left out)")  # fmt: skip
        print(f"  generate: python -m lmms_eval --model llava_hf --model_args pretrained=<export> "
              f"--tasks {task.tasks['generate']} --include_path {Path(args.out).resolve()} "
              "--log_samples --output_path <dir>")  # fmt: skip
        print(f"  choice:   the same with --tasks {task.tasks['choice']} (add --force_simple)")


def _provenance(samples: Path) -> dict:
    """Model and lmms-eval version from the results file lmms-eval wrote beside the samples."""
    date = samples.name.split("_samples_")[0]
    results = samples.with_name(f"{date}_results.json")
    if not results.exists():
        return {}
    r = json.loads(results.read_text())
    config = r.get("config") or {}
    return {
        "model": config.get("model"),
        "model_args": config.get("model_args"),
        "model_backend": config.get("model_backend"),
        "lmms_eval_version": r.get("lmms_eval_version"),
    }


def import_command(args: argparse.Namespace) -> None:
    from llava_ablate.eval.lmms_bridge import import_samples

    samples = Path(args.samples)
    m = import_samples(samples, Path(args.task_dir), Path(args.out), _eval_cfg(args.overrides),
                       model_name=args.model_name, scorer=args.scorer,
                       provenance=_provenance(samples))  # fmt: skip
    for scorer, s in m["scorers"].items():
        a = s["accuracy"]
        print(f"{m['dataset']}: {scorer} accuracy {a['value']:.4f} [{a['ci_low']:.4f}, "
              f"{a['ci_high']:.4f}] on {a['n']} questions -> {Path(args.out) / m['dataset']}")  # fmt: skip


def add_lmms_command(subparsers) -> None:
    """Registered by llava_ablate/cli.py."""
    lmms = subparsers.add_parser("lmms", help="the lmms-eval bridge: export tasks, import logs")
    sub = lmms.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export-task", help="frozen question sets -> lmms-eval task directories")
    ex.add_argument("overrides", nargs="*", help="evaluate.py overrides: eval/datasets=[...] ...")
    ex.add_argument("--out", required=True, help="the folder to pass as --include_path")
    ex.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    ex.add_argument("--pad-fill-from", default=None,
                    help="pad images to square with this processor's mean colour, as "
                         "evaluate.py's model.image_aspect=pad (default: images as read)")  # fmt: skip
    ex.set_defaults(func=export_command)
    im = sub.add_parser("import", help="an lmms-eval --log_samples file -> our predictions")
    im.add_argument("--samples", required=True, help="lmms-eval's <date>_samples_<task>.jsonl")
    im.add_argument("overrides", nargs="*", help="evaluate.py overrides (eval.stats, eval.hard)")
    im.add_argument("--task-dir", required=True, help="the exported llava_ablate_<dataset>/ dir")
    im.add_argument("--out", required=True, help="results directory (evaluate.py's layout)")
    im.add_argument("--model-name", default="lmms-eval", help="the model's name in results")
    im.add_argument("--scorer", default=None,
                    help="scorer name in our results (default: generate | likelihood)")  # fmt: skip
    im.set_defaults(func=import_command)
