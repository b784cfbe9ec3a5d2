"""Run identity: which config a run directory holds, as a short hash, and the guard that keeps
one directory to one config.

The default run directory is
`<runs_root>/[<arch>-]<llm>-<vision>-<projector>-<data>-<recipe>-<hash8>` (conf/config.yaml;
`<arch>-` unless it is LLaVA-1.5's `llava`): readable axes, then `config_hash` of the
*result-affecting* part of the resolved config, so a grid over any key (a learning rate,
`train.seed`) never collides.

Result-affecting = everything except `EXCLUDED` below: keys that cannot change the trained
weights or the reported numbers of a run that finishes. Paths are not excluded wholesale: a
value under one of the roots (`paths.*`, `train.runs_root`) is hashed relative to that root, so
moving the data or the runs to another disk keeps the identity while pointing a source at
another file changes it. Deliberately *included*: `data.num_workers` (the stream's slots are
world size x workers, which orders the samples), every `eval.*` key that changes what is scored,
labels such as `experiment`; the `arch` node unless it is LLaVA-1.5's `llava` (see
`_without_default_arch`). The world size is no config key; it is recorded next to the hash
and compared on re-runs the same way.

`run_identity.json` in the run directory records the hash, the hashed config and any allowed
changes; `config.yaml` holds the full resolved config. A re-run whose result-affecting config
differs is refused, naming the keys, unless each of them is listed in
`train.allow_config_change` (e.g. `train.allow_config_change=[recipe.max_steps]` to train an
existing run further): then the run continues and the change is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from llava_ablate.base.config import ConfigError
from llava_ablate.base.files import atomic_write

# Dotted key (with everything below it) -> why it cannot change a finished run's result.
EXCLUDED: dict[str, str] = {
    "hydra": "Hydra's own settings: output dirs, launcher, job logging",
    "paths": "where files live (values under these roots are hashed relative to them)",
    "train.runs_root": "where runs live",
    "train.run_dir": "the run's own directory, which this hash names",
    "train.allow_config_change": "the override that permits a deliberate change",
    "train.log_every": "logging cadence",
    "train.peak_tflops": "what MFU is reported against, not what trains",
    "train.save_every": "checkpoint cadence: resume is exact, so a cut does not show",
    "train.keep_checkpoints": "disk housekeeping",
    "train.export": "whether the HF directory is written, not what it holds",
    "train.dist_timeout_s": "how long a collective may wait",
    "train.gradient_checkpointing": "memory for compute: the same maths (RNG state is kept)",
    "train.nan_skip_limit": "a guard: it only decides whether the run stops",
    "data.max_bad_fraction": "a guard: it only decides whether the run stops",
    "data.shards_dir": "where the shards live",
    "data.build_workers": "each shard is written by one task: same bytes for any count",
    "data.sizes": "published sizes that only `plan` reads, before the build",
    "data.prefetch_factor": "how far the loader reads ahead, not what it delivers",
    "wandb": "experiment tracking",
    "eval.hook.every_steps": "evaluation scheduling",
    "eval.hook.at_end": "evaluation scheduling",
    "eval.scoring.batch_size": "evaluation throughput: the same questions and scorers",
    "eval.questions.dir": "where frozen question sets are stored",
    "eval.wandb": "experiment tracking",
    "eval.wandb_project": "experiment tracking",
    # The training hook scores only HOOK_SCORERS (eval_config.py): evaluate.py's own settings
    # cannot change what it reports.
    "eval.protocol": "evaluate.py's protocol sweep, never run by the training hook",
    "eval.scoring.open_prompt": "the open and all-classes scorers', not the training hook's",
    "eval.scoring.synonyms": "the open scorer's, not the training hook's",
}
# Roots a path value is hashed relative to, longest match first.
ROOTS = ("paths.data_root", "paths.shards_root", "paths.cache_dir", "train.runs_root")
RECORD = "run_identity.json"
EXPORT_MARKER = "export/COMPLETE"  # written last by llava_ablate/model/export.py
HASH_LEN = 8
# The config groups an ablation swaps: W&B's top-level keys and the report's columns. The run
# directory (conf/config.yaml train.run_dir) names all but deepspeed, which only its hash holds
# (and arch only when it is not the default llava).
AXES = ("arch", "vision", "llm", "projector", "data", "recipe", "deepspeed")


def axes_of(config: dict) -> dict[str, str]:
    """The option chosen on each axis the config has (`llm=qwen2`, `projector=mlp2x_gelu`)."""
    return {
        axis: str(node.get("name") or node.get("type"))
        for axis in AXES
        if isinstance(node := config.get(axis), dict)
    }


class RunConfigMismatch(ConfigError):
    """The run directory holds a run of another result-affecting config."""

    what: str = ""  # the message without the advice: which directory, hashes, differing keys
    refused: tuple[str, ...] = ()  # the differing keys not allowed by train.allow_config_change


def _excluded(key: str) -> bool:
    return any(key == e or key.startswith(e + ".") for e in EXCLUDED)


_busy = threading.local()


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved, result-affecting part of `cfg` (nested plain data, roots normalised)."""
    if getattr(_busy, "key", None):
        raise ConfigError(
            f"{_busy.key} refers to train.run_dir, which is named by the hash of the config "
            f"that holds it; refer to train.runs_root or a paths.* root instead"
        )
    roots = []
    for key in ROOTS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value.rstrip("/"):
            roots.append((value.rstrip("/"), "${" + key + "}"))
    roots.sort(key=lambda r: -len(r[0]))

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            for root, name in roots:
                if value == root or value.startswith(root + "/"):
                    return name + value[len(root) :]
        return value

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, DictConfig):
            if node._is_none():
                return None
            out = {}
            for k in node.keys():
                key = f"{path}.{k}" if path else str(k)
                if _excluded(key):
                    continue
                out[str(k)] = walk(_child(node, k, key), key)
            return out
        if isinstance(node, ListConfig):
            if node._is_none():
                return None
            return [walk(_child(node, i, f"{path}[{i}]"), f"{path}[{i}]") for i in range(len(node))]
        return norm(node)

    return _without_added_defaults(_without_default_arch(walk(cfg, "")))


def _without_default_arch(part: dict[str, Any]) -> dict[str, Any]:
    """LLaVA-1.5's `arch=llava` is what every run was before the arch axis existed, and its
    anyres keys (`arch.grid_tiles`, `arch.vision_aspect_ratio`) cannot change a llava run:
    leaving its node out keeps those runs' identities. Any other arch is hashed whole."""
    arch = part.get("arch")
    if isinstance(arch, dict) and arch.get("type") == "llava":
        part = {k: v for k, v in part.items() if k != "arch"}
    return part


# Keys added after runs existed, with the value every earlier run had: left out of the hash
# while they hold it, so those runs keep their identities; any other value is hashed.
ADDED_LATER = {
    ("recipe", "kernels"): "none",  # fused kernels (liger) are hashed
    ("llm", "builtin_recipe"): {},  # a built-in LLM's pre-training recipe (the demo's mini-LM)
    ("eval", "questions", "image_encoder"): None,  # image-level distractors' image tower
    ("vision", "builtin_recipe"): {},  # a built-in tower's design (the demo's mini-CLIP)
}


def _without_added_defaults(part: dict[str, Any]) -> dict[str, Any]:
    for path, default in ADDED_LATER.items():
        part = _without_default(part, path, default)
    return part


def _without_default(node: dict[str, Any], path: tuple[str, ...], default: Any) -> dict[str, Any]:
    """`node` without the key at `path` (nested dicts) when it holds `default`."""
    head, rest = path[0], path[1:]
    if head not in node:
        return node
    if not rest:
        return {k: v for k, v in node.items() if k != head} if node[head] == default else node
    child = node[head]
    return (
        {**node, head: _without_default(child, rest, default)} if isinstance(child, dict) else node
    )


def _child(node: DictConfig | ListConfig, k: Any, key: str) -> Any:
    if OmegaConf.is_missing(node, k):
        return "???"
    _busy.key = key  # a cycle back into train.run_dir is reported with the key that caused it
    try:
        return node[k]
    finally:
        _busy.key = None


def config_hash(part: dict[str, Any]) -> str:
    blob = json.dumps(part, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LEN]


def _run_hash_resolver(*, _root_: DictConfig) -> str:
    return config_hash(result_config(_root_))


def _run_name_resolver(*, _root_: DictConfig) -> str:
    """The run directory's own name (a multirun's record of a job is named after it)."""
    return Path(str(_root_.train.run_dir)).name


def _finished_run_resolver(prefix: str) -> str:
    """`${finished_run:<runs_root>/<axes>}`: the finished run of those axes -- `<axes>` itself or
    the one `<axes>-<hash>` with an export. Unchanged when none has finished (the run then stops
    naming the path); an error when several have (the config must say which)."""
    base = Path(prefix)
    pattern = re.compile(re.escape(base.name) + rf"-[0-9a-f]{{{HASH_LEN}}}")
    candidates = [base] if (base / EXPORT_MARKER).exists() else []
    if base.parent.is_dir():
        candidates += sorted(
            p for p in base.parent.iterdir()
            if pattern.fullmatch(p.name) and (p / EXPORT_MARKER).exists()
        )  # fmt: skip
    if len(candidates) > 1:
        names = ", ".join(str(p / "export") for p in candidates)
        raise ConfigError(
            f"recipe.init_from: {len(candidates)} finished runs match {prefix}: {names}; "
            f"name one: recipe.init_from=<run dir>/export"
        )
    return str(candidates[0]) if candidates else prefix


def _arch_prefix_resolver(arch: str) -> str:
    """The run directory's leading `<arch>-`, left out for the default `llava` so that the
    LLaVA-1.5 runs keep the names they always had (the hash holds every arch key anyway)."""
    return "" if arch == "llava" else f"{arch}-"


def register_resolvers() -> None:
    """`${run_hash:}`, `${run_name:}`, `${finished_run:...}` and `${arch_prefix:...}` for conf/
    (idempotent)."""
    if not OmegaConf.has_resolver("arch_prefix"):
        OmegaConf.register_new_resolver("arch_prefix", _arch_prefix_resolver)
    if not OmegaConf.has_resolver("run_hash"):
        OmegaConf.register_new_resolver("run_hash", _run_hash_resolver)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name_resolver)
    if not OmegaConf.has_resolver("finished_run"):
        OmegaConf.register_new_resolver("finished_run", _finished_run_resolver)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys (`data.sources[0].path`) -> values; lists of scalars stay one value."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out or {prefix: {}}
    if isinstance(node, list) and any(isinstance(x, (dict, list)) for x in node):
        out = {}
        for i, v in enumerate(node):
            out |= flatten(v, f"{prefix}[{i}]")
        return out or {prefix: []}
    return {prefix: node}


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Key -> (old, new) for every flattened key whose value differs (or exists on one side)."""
    a, b = flatten(old), flatten(new)
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)}  # fmt: skip


def _allowed(key: str, patterns: list[str]) -> bool:
    return any(key == p or key.startswith((p + ".", p + "[")) for p in patterns)


@dataclass
class RunIdentity:
    run_dir: Path
    config_hash: str  # of the config now: what the run trains with from here on
    run_hash: str  # of the config the run started with: names it (dir, W&B) for good
    config: dict[str, Any]  # the hashed part, resolved
    world_size: int
    changes: list[dict]  # allowed changes, oldest first (recorded)
    new_change: dict | None = None  # the change this start makes (to record)

    @property
    def wandb_id(self) -> str:
        """Stable across resumes; distinct for the same config in two directories."""
        where = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:HASH_LEN]
        return f"{self.run_hash}-{where}"


def _recorded(run_dir: Path) -> dict | None:
    """The run directory's record; older directories (config.yaml only) are read through the
    same `result_config`."""
    record = run_dir / RECORD
    if record.exists():
        try:
            return json.loads(record.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{record}: unreadable ({e}); restore it or remove it to compare with config.yaml"
            ) from e
    config = run_dir / "config.yaml"
    if config.exists():
        part = result_config(OmegaConf.create(yaml.safe_load(config.read_text()) or {}))
        return {"hash": config_hash(part), "config": part, "world_size": None}
    return None


def check_run_identity(cfg: DictConfig, run_dir: Path, *, world_size: int) -> RunIdentity:
    """The run's identity; RunConfigMismatch when `run_dir` holds another config (before any
    work). Every rank may call it: it only reads."""
    run_dir = Path(run_dir)
    part = result_config(cfg)
    now = config_hash(part)
    rec = _recorded(run_dir)
    if rec is None:
        return RunIdentity(run_dir, now, now, part, world_size, [])
    diff = diff_configs(rec["config"], part)
    if rec.get("world_size") not in (None, world_size):
        diff["world_size"] = (rec["world_size"], world_size)
    changes = list(rec.get("changes", []))
    run_hash = rec["hash"]
    if not diff:
        return RunIdentity(run_dir, now, run_hash, part, world_size, changes)
    allow = list(OmegaConf.select(cfg, "train.allow_config_change", default=None) or [])
    refused = [k for k in diff if not _allowed(k, allow)]
    if refused:
        lines = [f"  {k}: {diff[k][0]} -> {diff[k][1]}" for k in refused]
        what = (
            f"{run_dir} holds a run of another result-affecting config (recorded: "
            f"{run_dir / RECORD if (run_dir / RECORD).exists() else run_dir / 'config.yaml'}, "
            f"hash {rec.get('config_hash', run_hash)}; now {now}). Differing keys:\n"
            + "\n".join(lines)
        )
        advice = (
            "\nTo start a separate run, leave train.run_dir unset (the default directory is "
            "named by the config's hash) or choose another one.\nTo continue this run after a "
            f"deliberate change, add train.allow_config_change=[{','.join(refused)}]"
        )
        err = RunConfigMismatch(what + advice)
        err.what, err.refused = what, tuple(refused)  # launch/ words its own advice for grids
        raise err
    change = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "keys": list(diff),
        "from_hash": rec.get("config_hash", run_hash),
        "to_hash": now,
    }
    return RunIdentity(run_dir, now, run_hash, part, world_size, changes, change)


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:  # other ranks read it: never half a file
        tmp.write_text(text)


def record_run_identity(cfg: DictConfig, run_dir: Path, ident: RunIdentity) -> None:
    """Rank 0: write `config.yaml` and `run_identity.json` once -- and again only after an
    allowed change, which is appended to the record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RECORD).exists() and ident.new_change is None:
        return
    changes = ident.changes + ([ident.new_change] if ident.new_change else [])
    _write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record = {
        "hash": ident.run_hash,
        "config_hash": ident.config_hash,
        "run_dir": str(run_dir),
        "world_size": ident.world_size,
        "excluded": sorted(EXCLUDED),
        "changes": changes,
        "config": ident.config,
    }
    _write_atomic(run_dir / RECORD, json.dumps(record, indent=2, default=str))


register_resolvers()


def check_init_from(init_from: str | None, run_dir: Path) -> None:
    """A stage that starts from another's export needs that directory -- unless this run has
    finished (its export is all it needs). Checked before anything is written (Hydra's run
    directory included) and again when training starts."""
    if init_from and not (run_dir / EXPORT_MARKER).exists() and not Path(init_from).is_dir():
        raise ConfigError(
            f"recipe.init_from={init_from}: no such directory; train the previous stage to "
            "completion first (its export/ directory), or fix the path"
        )
