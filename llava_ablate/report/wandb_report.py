"""The same comparison as a W&B Report (wandb-workspaces): built offline as a model, saved by
one small function that is the only place that needs a logged-in W&B server.

Panels read what the runs log: `train/*` curves and the training hook's `eval/<dataset>/*`
metrics; runs are selected by the grid's W&B group and grouped by each ablation axis (logged as
top-level config keys by llava_ablate/tracking.py)."""

from __future__ import annotations

from llava_ablate.report.collect import RunResult
from llava_ablate.report.compare import Delta, Variant


def varied_axes(runs: list[RunResult]) -> list[str]:
    """The axes the trained runs differ in (a zero-shot baseline has none: no W&B run)."""
    trained = [r for r in runs if not r.zero_shot]
    axes = sorted({a for r in trained for a in r.axes})
    return [a for a in axes if len({r.axes.get(a) for r in trained}) > 1]


def build_report(
    runs: list[RunResult],
    base: Variant,
    delta_items: list[Delta],
    *,
    project: str,
    entity: str,
    group: str | None,
    title: str,
):
    import wandb_workspaces.reports.v2 as wr

    datasets = sorted({d for r in runs for d in r.datasets})
    has_hard = any(ds.hard for r in runs for ds in r.datasets.values())
    filters = f"Metric('group') == '{group}'" if group else ""

    def runset(axis: str | None) -> wr.Runset:
        return wr.Runset(
            entity=entity,
            project=project,
            name=f"by {axis}" if axis else "runs",
            filters=filters,
            groupby=[axis] if axis else [],
        )

    blocks: list = [
        wr.P(f"{len(runs)} variants ({', '.join(r.label for r in runs)}); baseline {base.label}."),
        wr.TableOfContents(),
    ]
    for axis in varied_axes(runs) or [None]:
        by = f" by {axis}" if axis else ""
        blocks += [
            wr.H2(f"Accuracy per dataset{by}"),
            wr.PanelGrid(
                runsets=[runset(axis)],
                panels=[
                    wr.BarPlot(
                        title=f"{d} accuracy", metrics=[f"eval/{d}/accuracy"], groupby=axis
                    )  # fmt: skip
                    for d in datasets
                ],
            ),
        ]
        if has_hard:
            blocks += [
                wr.H2(f"Hard-class accuracy{by}"),
                wr.PanelGrid(
                    runsets=[runset(axis)],
                    panels=[
                        wr.BarPlot(
                            title=f"{d} hard-class accuracy",
                            metrics=[f"eval/{d}/hard_accuracy"],
                            groupby=axis,
                        )  # fmt: skip
                        for d in datasets
                    ],
                ),
            ]
        blocks += [
            wr.H2(f"Training curves{by}"),
            wr.PanelGrid(
                runsets=[runset(axis)],
                panels=[
                    wr.LinePlot(title="loss", x="Step", y=["train/loss"], groupby=axis),
                    wr.LinePlot(
                        title="tokens/s", x="Step", y=["train/tokens_per_s"], groupby=axis
                    ),  # fmt: skip
                    *[
                        wr.LinePlot(
                            title=f"{d} accuracy during training",
                            x="Step",
                            y=[f"eval/{d}/accuracy"],
                            groupby=axis,
                        )  # fmt: skip
                        for d in datasets
                    ],
                ],
            ),
        ]
    rows = [
        f"| {d.variant} | {d.dataset}{_subset(d)} | {d.seeds} | {100 * d.comparison.delta:+.2f} "
        f"[{100 * d.comparison.delta_ci_low:+.2f}, {100 * d.comparison.delta_ci_high:+.2f}] "
        f"| {'-' if d.comparison.mcnemar_p is None else f'{d.comparison.mcnemar_p:.3g}'} "
        f"| {d.comparison.n} |"
        for d in delta_items
    ]
    blocks += [
        wr.H2(f"Deltas against {base.label}"),
        wr.MarkdownBlock(
            "| variant | dataset | seeds | delta (pp) [95% CI] | McNemar p | n |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows)
        ),
        wr.H2("Variants"),
        *[wr.CodeBlock(code=r.config_text or "(no config)", language="yaml") for r in runs],
    ]
    return wr.Report(project=project, entity=entity, title=title, blocks=blocks,
                     description=f"llava-ablate comparison of {len(runs)} variants")  # fmt: skip


def _subset(d: Delta) -> str:
    return "" if d.subset == "all questions" else f" ({d.subset})"


def save_report(report) -> str:
    """The network call: publish the report (needs `wandb login`); returns its URL."""
    try:
        report.save()
    except Exception as e:  # noqa: BLE001 - surface any client/server error with a hint
        raise RuntimeError(
            f"could not save the W&B report ({type(e).__name__}: {e}); run `wandb login` "
            "(or set WANDB_API_KEY) and check --wandb-entity/--wandb-project"
        ) from e
    return report.url
