"""The demo's terminal summary: each stage-2 run's accuracies, the CLIP baseline, and the
spread over seeds of each LLM arm and of the data-axis delta."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llava_ablate.demo.plan import DATA, LLMS, Step

SCORER = "name_likelihood"  # the headline (first) scorer of demo_stage2
LETTER_SCORER = "likelihood"  # the option letter, the paper's A-Z answer


@dataclass(frozen=True)
class ArmScore:
    """One stage-2 run's headline (name-likelihood) accuracies."""

    llm: str
    data: str
    seed: int
    accuracy: float
    hard: float | None  # on the hard classes


def spread(values: list[float], signed: bool = False) -> str:
    """`mean  sd  min - max` over seeds (sd with n - 1)."""
    import statistics

    f = "{:+.3f}" if signed else "{:.3f}"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return (f"{f.format(statistics.fmean(values)):>7} {sd:6.3f}  "
            f"{f.format(min(values))} - {f.format(max(values))}")  # fmt: skip


def seed_spread_lines(scores: list[ArmScore]) -> list[str]:
    """For each LLM arm trained with several seeds: mean, sd and range over its seeds of the
    accuracy and hard-class accuracy per data arm, and of the data-axis delta (DATA[1] -
    DATA[0], overall and hard) computed within each seed (the same seed's stage 1 under both)."""
    lines = []
    for llm in dict.fromkeys(s.llm for s in scores):
        arm = [s for s in scores if s.llm == llm]
        seeds = list(dict.fromkeys(s.seed for s in arm))
        if len(seeds) < 2:
            continue
        lines += ["", f"{llm}: spread over {len(seeds)} seeds ({', '.join(map(str, seeds))}), "
                  f"name likelihood", f"{'':<44} {'mean':>7} {'sd':>6}  min - max"]  # fmt: skip
        by = {(s.data, s.seed): s for s in arm}
        for data in DATA:
            runs = [by[data, seed] for seed in seeds if (data, seed) in by]
            if runs:
                lines.append(f"{f'  {data} accuracy':<44} {spread([r.accuracy for r in runs])}")
            hard = [r.hard for r in runs if r.hard is not None]
            if hard:
                lines.append(f"{f'  {data} hard classes':<44} {spread(hard)}")
        base, extra = DATA
        pairs = [(by[base, s], by[extra, s]) for s in seeds if (base, s) in by and (extra, s) in by]
        if len(pairs) < 2:
            continue
        for what, get in (("accuracy", lambda r: r.accuracy), ("hard classes", lambda r: r.hard)):
            deltas = [(a.seed, get(b) - get(a)) for a, b in pairs
                      if get(a) is not None and get(b) is not None]  # fmt: skip
            if len(deltas) < 2:
                continue
            per_seed = ", ".join(f"{d:+.3f} (seed {seed})" for seed, d in deltas)
            label = f"  delta {extra} - {base}, {what}"
            lines.append(f"{label:<44} {spread([d for _, d in deltas], signed=True)}"
                         f"   per seed: {per_seed}")  # fmt: skip
    return lines


def llm_axis_lines(scores: list[ArmScore]) -> list[str]:
    """The LLM-axis delta (LLMS[1] - LLMS[0]: pre-trained minus random-init, the same samples)
    per data arm, within each seed, overall and on the hard classes, and whether it is positive
    in every seed."""
    weak, strong = LLMS
    by = {(s.llm, s.data, s.seed): s for s in scores}
    seeds = list(dict.fromkeys(s.seed for s in scores if s.llm == strong))
    lines = []
    for data in DATA:
        pairs = [(by[weak, data, s], by[strong, data, s]) for s in seeds
                 if (weak, data, s) in by and (strong, data, s) in by]  # fmt: skip
        if not pairs:
            continue
        if not lines:
            lines += ["", f"LLM axis, {strong} - {weak} (same samples), name likelihood, "
                      "per seed"]  # fmt: skip
        for what, get in (("accuracy", lambda r: r.accuracy), ("hard classes", lambda r: r.hard)):
            deltas = [(a.seed, get(b) - get(a)) for a, b in pairs
                      if get(a) is not None and get(b) is not None]  # fmt: skip
            if not deltas:
                continue
            per_seed = ", ".join(f"{d:+.3f} (seed {seed})" for seed, d in deltas)
            every = (
                "positive in every seed" if all(d > 0 for _, d in deltas) else "NOT in every seed"
            )
            lines.append(f"  {data} {what:<13} {per_seed}   {every}")
    return lines


def summary(stage2: list[Step], baseline: Path, wall_s: float | None = None) -> str:
    """Per seed: each LLM arm's spread and the LLM-axis delta; then the report's own rows (seeds
    aggregated, the zero-shot row first, the report's intervals) for the names and the letter
    scorer, the wall time and the two findings with their CIs (`report.summary.grid_summary`)."""
    from llava_ablate.report.collect import read_run
    from llava_ablate.report.summary import grid_summary

    scores = []
    for step in stage2:
        ds = read_run(step.done.parent, SCORER).datasets["mini_classify"]
        hard = ds.hard.value if ds.hard else None
        scores.append(ArmScore(step.llm, step.data, step.seed, ds.accuracy.value, hard))
    per_seed = llm_axis_lines(scores) + seed_spread_lines(scores)
    paths = [*dict.fromkeys(s.done.parent for s in stage2), baseline]
    table = grid_summary(paths, scorers=[SCORER, LETTER_SCORER], llms=(LLMS[0], LLMS[1]),
                         data=DATA, wall_s=wall_s)  # fmt: skip
    return "\n".join([*per_seed, "", table] if per_seed else [table])
