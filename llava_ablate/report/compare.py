"""Each variant against a baseline, per dataset, on the same frozen questions: the accuracy
delta with a paired-bootstrap 95% CI and the exact McNemar p-value (llava_ablate/eval/stats.py,
the evaluator's own statistics)."""

from __future__ import annotations

from dataclasses import dataclass

from llava_ablate.eval.stats import PairedComparison, paired_comparison
from llava_ablate.report.collect import ResultsError, RunResult


@dataclass
class Delta:
    variant: str
    dataset: str
    comparison: PairedComparison


def pick_baseline(runs: list[RunResult], baseline: str | None) -> RunResult:
    if baseline is None:
        return runs[0]
    matches = [r for r in runs if baseline in (r.label, str(r.path), r.path.name)]
    if len(matches) != 1:
        raise ResultsError(
            f"--baseline {baseline!r} matches {len(matches)} runs; choose one of "
            f"{[r.label for r in runs]}"
        )
    return matches[0]


def deltas(runs: list[RunResult], base: RunResult, n_boot: int, seed: int) -> list[Delta]:
    out = []
    for run in runs:
        if run is base:
            continue
        for name, ds in run.datasets.items():
            ref = base.datasets.get(name)
            if ref is None:
                continue
            if ref.fingerprint and ds.fingerprint and ref.fingerprint != ds.fingerprint:
                raise ResultsError(
                    f"{name}: {ds.source} and {ref.source} were scored on different question "
                    f"sets ({ds.fingerprint} vs {ref.fingerprint}); a paired test needs the same"
                )
            qids = [q for q in ref.correct if q in ds.correct]
            if not qids or len(qids) != len(ref.correct) or len(qids) != len(ds.correct):
                raise ResultsError(
                    f"{name}: predictions of {ds.source} and {ref.source} do not cover the same "
                    f"questions ({len(ds.correct)} vs {len(ref.correct)}, {len(qids)} shared)"
                )
            a = [ref.correct[q] for q in qids]
            b = [ds.correct[q] for q in qids]
            out.append(Delta(run.label, name, paired_comparison(a, b, n_boot, seed)))
    return out
