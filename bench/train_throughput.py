"""Training throughput side by side: ours against the trainers users pick instead.

    python -m bench.train_throughput                 # both models, every trainer (make peers first)
    python -m bench.train_throughput --smoke         # the tiny model, a few steps (the slow test)

Every trainer trains the same LLaVA variant (one export: weights, tokenizer, processor) on the
same samples (a LLaVA-like mix: 1-4 turn conversations, short VQA answers and long descriptions,
photo-sized JPEGs and text-only rows), with the same micro-batch, precision (fp32), number of
CPU ranks (torchrun, gloo), DeepSpeed stage, learning rate (constant) and number of steps, the
vision tower frozen:

- ours, `data.batching=group` and `pack`: the real train.py (recipe.init_from the export);
- TRL's `SFTTrainer` (bench/peers/trl_sft.py, in .venv-peers);
- LLaMA-Factory with its `llava` template (bench/peers/llamafactory_sft.py, in
  .venv-llamafactory: its pins need older transformers, datasets and peft than ours).

Figures per trainer: samples/s and supervised tokens/s over the steps after the first logged
window (warm-up: start-up, JIT builds, allocator), peak RSS of every rank (bench/peers/
rank_rss.py, the same wrapper for all) and the loss at each logged step. A trainer that cannot
run says why (its venv missing, or the error it raised). Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.llava_mix import make_rows  # noqa: E402

PEERS_DIR = ROOT / "bench" / "peers"
# The models: our config groups; both share the tiny CLIP tower (16 image tokens).
MODELS = {
    "tiny": ["vision=tiny_clip", "llm=tiny_llama", "llm.config.max_position_embeddings=1024"],
    "smollm2": ["vision=tiny_clip", "llm=smollm2_135m"],
}
TRAINERS = ("ours-group", "ours-pack", "trl", "llamafactory", "llamafactory-noaudio")
# Where each peer runs (Makefile `peers`), overridable for a venv built elsewhere.
PEER_PYTHONS = {
    "trl": ("LLAVA_PEERS_PYTHON", ROOT / ".venv-peers" / "bin" / "python"),
    "llamafactory": ("LLAVA_LLAMAFACTORY_PYTHON", ROOT / ".venv-llamafactory" / "bin" / "python"),
}
PEER_PYTHONS["llamafactory-noaudio"] = PEER_PYTHONS["llamafactory"]
PEER_SCRIPTS = {
    "trl": PEERS_DIR / "trl_sft.py",
    "llamafactory": PEERS_DIR / "llamafactory_sft.py",
    # the same, with an empty module for torchaudio (bench/peers/llamafactory_sft.py says why)
    "llamafactory-noaudio": PEERS_DIR / "llamafactory_sft.py",
}


@dataclass(frozen=True)
class Setup:
    """What every trainer is given."""

    samples: int = 768
    micro_batch: int = 4
    nproc: int = 2
    steps: int = 40
    log_every: int = 10  # the first window is warm-up and not timed
    lr: float = 1e-4
    zero_stage: int = 2
    max_length: int = 1024
    seed: int = 0
    # Off for every trainer: all three turn it on by default (ours train.gradient_checkpointing,
    # TRL's SFTConfig, LLaMA-Factory), trading speed for activation memory; --recompute: all on.
    gradient_checkpointing: bool = False


SMOKE = Setup(samples=64, micro_batch=2, steps=6, log_every=2)
# SmolLM2-135M in fp32 on one thread per rank is compute-bound (~17 s a step on a loaded 2-core
# CPU at micro-batch 4): fewer steps, the same samples and micro-batch.
STEPS = {"smollm2": dict(steps=16, log_every=4)}


# --- the model every trainer starts from -------------------------------------------------------


def export_model(model: str, out: Path) -> Path:
    """The variant of MODELS[model] saved as transformers saves a Llava model, with its processor
    (the chat template our export writes): what every trainer loads. Idempotent."""
    if (out / "bench_export.json").exists():
        return out
    from bench.common import variant_from
    from llava_ablate.model.export import save_processor

    variant = variant_from(MODELS[model])
    variant.model.save_pretrained(out)
    save_processor(variant.processor, out)
    (out / "bench_export.json").write_text(json.dumps({"overrides": MODELS[model]}))
    return out


# --- running one trainer ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ours_command(mode: str, model: str, setup: Setup, data: Path, export: Path, run: Path):
    rows = data / "rows.json"
    source = f"[{{name:bench_mix,path:{rows},image_root:{data}}}]"
    overrides = [
        *MODELS[model],
        "data=toy_instruct",  # a finetune mixture, its sources replaced by the bench's rows
        "data.builtin=null",
        "data.name=bench_mix",
        f"data.sources={source}",
        f"data.shards_dir={data / 'shards'}",
        "data.num_workers=1",
        f"data.batching={mode}",
        "recipe=finetune",
        f"deepspeed=zero{setup.zero_stage}",
        f"recipe.micro_batch_size={setup.micro_batch}",
        f"recipe.global_batch_size={setup.micro_batch * setup.nproc}",
        f"recipe.max_steps={setup.steps}",
        f"recipe.max_length={setup.max_length}",
        f"recipe.lr.projector={setup.lr}",
        f"recipe.lr.llm={setup.lr}",
        "recipe.schedule=constant",
        "recipe.warmup_ratio=0",
        f"recipe.init_from={export}",
        "recipe.init_parts=[all]",
        "train.precision=fp32",
        f"train.gradient_checkpointing={str(setup.gradient_checkpointing).lower()}",
        f"train.seed={setup.seed}",
        f"train.log_every={setup.log_every}",
        "train.save_every=0",
        "train.export=false",
        "wandb.enabled=false",
        f"train.run_dir={run}",
    ]
    return [sys.executable, str(ROOT / "train.py"), *overrides]


def build_shards(overrides: list[str], env: dict) -> None:
    """`llava-ablate data build` for our runs (the peers read the JSON rows): once, not timed."""
    cmd = [sys.executable, "-m", "llava_ablate.cli", "data", "build", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 and "StaleShards" in proc.stderr:  # the rows were regenerated
        proc = subprocess.run([*cmd, "--force"], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the bench's shards failed: {proc.stderr[-3000:]}")


def peer_python(trainer: str) -> tuple[str | None, str]:
    """The peer's interpreter, or None and why not."""
    var, default = PEER_PYTHONS[trainer]
    python = Path(os.environ.get(var, default))
    if not python.exists():
        return None, f"not installed: no {python} (build it with `make peers`, or set {var})"
    return str(python), ""


def run_trainer(trainer: str, model: str, setup: Setup, work: Path, data: Path, export: Path):
    """Train one trainer under torchrun; its figures, or {"reason": ...}."""
    out = work / model / trainer
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("rank*.json"), *(out / "rss").glob("*.json")]:
        old.unlink()
    if trainer.startswith("ours-"):
        python, cmd = (
            sys.executable,
            ours_command(trainer[5:], model, setup, data, export, out / "run"),
        )
        shutil.rmtree(out / "run", ignore_errors=True)
        try:
            build_shards(cmd[2:], run_env(trainer, out))
        except RuntimeError as e:
            return {"reason": str(e)[:2000]}
    else:
        python, why = peer_python(trainer)
        if python is None:
            return {"reason": why}
        job = {**asdict(setup), "model_dir": str(export), "rows": str(data / "rows.json"),
               "image_root": str(data), "out_dir": str(out),
               "stub_torchaudio": trainer == "llamafactory-noaudio"}  # fmt: skip
        (out / "job.json").write_text(json.dumps(job))
        cmd = [python, str(PEER_SCRIPTS[trainer]), str(out / "job.json")]
    launcher = [python, "-m", "torch.distributed.run", f"--nproc_per_node={setup.nproc}",
                f"--master_port={_free_port()}", str(PEERS_DIR / "rank_rss.py")]  # fmt: skip
    env = run_env(trainer, out)
    t0 = time.perf_counter()
    proc = subprocess.run([*launcher, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "stdout.log").write_text(proc.stdout)
    (out / "stderr.log").write_text(proc.stderr)
    if proc.returncode != 0:
        return {"reason": f"failed (exit {proc.returncode}): {first_error(proc.stderr)}",
                "log": str(out / "stderr.log"), "wall_s": wall}  # fmt: skip
    shutil.rmtree(out / "run" / "checkpoints", ignore_errors=True)  # ours' final one: unused
    read = ours_figures if trainer.startswith("ours-") else peer_figures
    try:
        figures = read(out / "run" if trainer.startswith("ours-") else out, setup)
    except (OSError, ValueError, KeyError, RuntimeError, ZeroDivisionError) as e:
        return {"reason": f"ran, but left no figures: {type(e).__name__}: {e}", "wall_s": wall}
    rss = [json.loads(p.read_text()) for p in sorted((out / "rss").glob("rank*.json"))]
    figures["peak_rss_mib_per_rank"] = [r["peak_rss_kib"] / 1024 for r in rss]
    figures["peak_rss_mib"] = max(figures["peak_rss_mib_per_rank"])
    figures["wall_s"] = wall
    return figures


def run_env(trainer: str, out: Path) -> dict:
    venv = "ours" if trainer.startswith("ours-") else Path(peer_python(trainer)[0]).parents[1].name
    cache = Path(os.environ.get("LLAVA_CACHE_DIR", ROOT / ".cache" / "llava_ablate")).resolve()
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LLAVA_CACHE_DIR": str(cache),
        "BENCH_RSS_DIR": str(out / "rss"),
        "OMP_NUM_THREADS": "1",  # one thread per rank, every trainer
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(out / "hf_datasets"),
        # DeepSpeed JIT-builds its CPU ops per venv (the flags differ): one cache each, built once
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions" / f"bench-{venv}"),
    }


def first_error(stderr: str) -> str:
    """The exception a failed run raised (its last `...Error: ...` line), else its last line."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", ln).strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln and "ChildFailedError" not in ln]  # torchrun's own
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|NotBuilt)\b.*:", ln)]
    return (errors or lines or ["no output"])[-1][:500]


# --- figures ---------------------------------------------------------------------------------


def ours_figures(run_dir: Path, setup: Setup) -> dict:
    """From the run's metrics.jsonl: the windows after the first one."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    rows = [r for r in rows if "samples_per_s" in r]
    seconds = samples = supervised = tokens = 0.0
    for prev, row in zip(rows, rows[1:], strict=False):
        dt = row["time_s"] - prev["time_s"]
        seconds += dt
        samples += row["samples_per_s"] * dt
        supervised += row["supervised_tokens_per_s"] * dt
        tokens += row["tokens_per_s"] * dt
    return {
        "samples_per_s": samples / seconds,
        "supervised_tokens_per_s": supervised / seconds,
        "tokens_per_s": tokens / seconds,
        "timed_steps": rows[-1]["step"] - rows[0]["step"],
        "loss": [{"step": r["step"], "loss": r["loss"]} for r in rows],
    }


def peer_figures(out: Path, setup: Setup) -> dict:
    """From each rank's StepClock record: the steps after the first logged window."""
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if len(ranks) != setup.nproc:
        raise RuntimeError(f"{out}: {len(ranks)} rank records, expected {setup.nproc}")
    zero = next(r for r in ranks if r["rank"] == 0)
    t = {s["step"]: s["t"] for s in zero["steps"]}
    start, end = setup.log_every, max(t)
    timed = [s for r in ranks for s in r["steps"] if start < s["step"] <= end]
    seconds = t[end] - t[start]
    total = lambda key: sum(s.get(key, 0) for s in timed)  # noqa: E731
    return {
        "samples_per_s": total("samples") / seconds,
        "supervised_tokens_per_s": total("supervised") / seconds,
        "tokens_per_s": total("tokens") / seconds,
        "timed_steps": end - start,
        "loss": zero["losses"],
    }


# --- the bench -------------------------------------------------------------------------------


VERSIONS_CODE = """import importlib.metadata as m, json
out = {{}}
for n in {names!r}:
    try:
        out[n] = m.version(n)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))"""


def versions(trainer: str) -> dict:
    """The peer's own versions of what matters, read in its venv."""
    python = sys.executable if trainer.startswith("ours-") else peer_python(trainer)[0]
    if python is None:
        return {}
    names = ["torch", "transformers", "deepspeed", "accelerate", "trl", "llamafactory", "datasets"]
    code = VERSIONS_CODE.format(names=names)
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def print_table(results: dict) -> None:
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, nproc {m['nproc']}; {m['uptime']}")
    s = results["setup"]
    print(f"setup: {s['nproc']} CPU ranks, micro-batch {s['micro_batch']}, fp32, ZeRO-{s['zero_stage']}, "
          f"steps (first ones not timed) {results['steps']}, {s['samples']} samples, "
          f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}\n")  # fmt: skip
    head = f"{'model':<8} {'trainer':<21} {'samples/s':>10} {'sup tok/s':>10} {'tok/s':>9} "
    print(head + f"{'peak RSS MiB/rank':>18}  loss (first -> last)")
    for model, rows in results["models"].items():
        for trainer, r in rows.items():
            if "reason" in r:
                print(f"{model:<8} {trainer:<21} not run: {r['reason']}")
                continue
            rss = "/".join(f"{x:.0f}" for x in r["peak_rss_mib_per_rank"])
            loss = (
                f"{r['loss'][0]['loss']:.3f} -> {r['loss'][-1]['loss']:.3f}" if r["loss"] else "-"
            )
            print(f"{model:<8} {trainer:<21} {r['samples_per_s']:>10.2f} "
                  f"{r['supervised_tokens_per_s']:>10.0f} {r['tokens_per_s']:>9.0f} {rss:>18}  {loss}")  # fmt: skip
        best = best_peer(rows)
        if best:
            print(f"{model:<8} ours best over the best peer ({best[0]}): {best[1]:.2f}x samples/s")


def best_peer(rows: dict) -> tuple[str, float] | None:
    ours = [
        r["samples_per_s"] for k, r in rows.items() if k.startswith("ours-") and "reason" not in r
    ]
    peers = {
        k: r["samples_per_s"]
        for k, r in rows.items()
        if not k.startswith("ours-") and "reason" not in r
    }
    if not ours or not peers:
        return None
    name = max(peers, key=peers.get)
    return name, max(ours) / peers[name]


def write_results(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.train_throughput", description=__doc__.splitlines()[0]
    )
    p.add_argument("--smoke", action="store_true", help="the tiny model, 6 steps, 64 samples")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    p.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--nproc", type=int, default=None)
    p.add_argument(
        "--recompute", action="store_true", help="gradient checkpointing on, in every trainer"
    )
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_train"))
    p.add_argument("--out", default=None, help="JSON results (default: <work-dir>/results.json)")
    return p


def main(argv: list[str] | None = None) -> dict:
    from bench.common import machine

    args = build_parser().parse_args(argv)
    setup = SMOKE if args.smoke else Setup()
    for key in ("steps", "micro_batch", "nproc"):
        if getattr(args, key):
            setup = replace(setup, **{key: getattr(args, key)})
    setup = replace(setup, gradient_checkpointing=args.recompute)
    models = args.models or (["tiny"] if args.smoke else list(MODELS))
    work = Path(args.work_dir).resolve()
    results = {"machine": machine(), "setup": asdict(setup), "smoke": args.smoke,
               "versions": {t: versions(t) for t in args.trainers}, "models": {}}  # fmt: skip
    print(f"machine: {results['machine']['uptime']}; nproc {results['machine']['nproc']}")
    out = Path(args.out) if args.out else work / "results.json"
    data = make_rows(work / f"data-{setup.samples}", setup.samples, setup.seed).parent
    for model in models:
        export = export_model(model, work / "models" / model)
        rows = results["models"][model] = {}
        model_setup = setup if args.smoke or args.steps else replace(setup, **STEPS.get(model, {}))
        results.setdefault("steps", {})[model] = [model_setup.steps, model_setup.log_every]
        for trainer in args.trainers:
            rows[trainer] = run_trainer(trainer, model, model_setup, work, data, export)
            write_results(results, out)  # as it goes: an interrupted run keeps what it measured
            r = rows[trainer]
            shown = r.get("reason") or f"{r['samples_per_s']:.2f} samples/s ({r['wall_s']:.0f} s)"
            print(f"  {model} {trainer}: {shown}", flush=True)
    results["machine_after"] = machine()["uptime"]
    write_results(results, out)
    print_table(results)
    print(f"load after: {results['machine_after']}\nresults: {out}")
    summary = {}
    for model, rows in results["models"].items():
        best = best_peer(rows)
        if best:
            summary[f"{model}.ours_over_{best[0]}"] = best[1]
    return summary


if __name__ == "__main__":
    main()
