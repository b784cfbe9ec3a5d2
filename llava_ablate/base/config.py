"""The config pieces every layer shares: the error type, range checks, the unknown-key walk, and
how the entry points report a config error (its own message last, before any work). The schemas
themselves sit one layer up: `config.py` (a training run) and `eval_config.py` (the evaluator)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn, get_args, get_origin, get_type_hints

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


@dataclass
class PathsCfg:
    data_root: str = "data"
    shards_root: str = "data/shards"
    cache_dir: str = ".cache/llava_ablate"


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take; bounds are inclusive unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False  # null (None) is allowed too, e.g. "no limit"

    def check(self, key: str, value: Any) -> None:
        if value is None:
            if not self.nullable:
                raise ConfigError(f"{key} is null; it must be {self}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is not a number; it must be {self}")
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if too_low or too_high or value != value:  # value != value: NaN
            raise ConfigError(f"{key}={value!r} is out of range; it must be {self}")

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"

        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{num(self.low)}, {num(self.high)}{right}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {num(self.low)}"
        else:
            text = f"{'<' if self.high_open else '<='} {num(self.high)}"
        return text + (" or null" if self.nullable else "")


def declared_choices(annotation: Any) -> tuple | None:
    """The values a field's type allows: `Annotated[str, Literal["clip", "siglip"]]` (a list's
    elements: `list[Annotated[...]]`); None when it declares none. OmegaConf 2.3 types the
    field by Annotated's first argument and ignores the Literal, which is ours to check."""
    if get_origin(annotation) is Annotated:
        return next(
            (get_args(m) for m in annotation.__metadata__ if get_origin(m) is Literal), None
        )
    if get_origin(annotation) is list:
        return declared_choices(get_args(annotation)[0])
    return None


@functools.cache
def _declared(schema: type) -> dict[str, tuple[tuple, bool]]:
    """field -> (allowed values, whether the field is a list of them), of `schema`'s fields."""
    hints = get_type_hints(schema, include_extras=True)
    found = {}
    for f in dataclasses.fields(schema):
        allowed = declared_choices(hints[f.name])
        if allowed is not None:
            found[f.name] = (allowed, get_origin(hints[f.name]) is list)
    return found


def choices_of(schema: type, name: str) -> tuple:
    """The values `schema.name` may take, as its type declares them."""
    return _declared(schema)[name][0]


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def check_choices(node: Any, path: str = "") -> None:
    """Every key at or below `node` (a structured DictConfig, or the dataclasses `to_object`
    makes) whose field type declares its allowed values: raise ConfigError naming the first
    key holding another value, and the values allowed."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        for key, child in _children(node):  # eval.datasets: name -> DatasetCfg
            check_choices(child, f"{path}.{key}")
        return
    declared = _declared(schema)
    for f in dataclasses.fields(schema):
        key = f"{path}.{f.name}" if path else f.name
        if f.name in declared:
            allowed, is_list = declared[f.name]
            value = getattr(node, f.name)
            for v in (value or ()) if is_list else (value,):
                check_choice(key, v, allowed)
            continue
        child = node._get_node(f.name) if isinstance(node, DictConfig) else getattr(node, f.name)
        if isinstance(child, ListConfig | list):
            for i, item in enumerate(_present(child)):
                check_choices(item, f"{key}[{i}]")
        elif _present_node(child):
            check_choices(child, key)


def _present_node(child: Any) -> bool:
    if isinstance(child, DictConfig):
        return not (child._is_missing() or child._is_none())
    return dataclasses.is_dataclass(child) or isinstance(child, dict)


def _present(items: Any) -> list:
    if isinstance(items, ListConfig):
        if items._is_missing() or items._is_none():
            return []
        items = [items._get_node(i) for i in range(len(items))]  # unresolved
    return [x for x in items if _present_node(x)]


def _children(node: Any) -> list[tuple[Any, Any]]:
    pairs = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
    return [(k, v) for k, v in pairs if _present_node(v)]


# Only nodes typed by a dataclass are checked: the `dict[str, Any]` fields (vision.config and
# llm.config: Hugging Face config overrides; deepspeed.extra: raw DeepSpeed JSON) are free-form
# by design. Hydra's own node (present in a callback's config) is Hydra's to check.
_HYDRA_NODE = "hydra"


def unknown_keys(cfg: Any) -> list[str]:
    """Keys in a composed config (DictConfig or the dataclasses `to_object` makes) that its
    structured schema does not declare.

    Struct mode rejects `recipe.lrr=1`, but Hydra's `+key=value` adds a key even to a struct
    config (`force_add`), and `OmegaConf.to_object` then sets it as a stray attribute: without
    this walk `+recipe.not_a_key=1` would be accepted and written to config.yaml.
    """
    return [name for name, _ in _stray_keys(cfg)]


def _stray_keys(cfg: Any) -> list[tuple[str, str | None]]:
    """(full key, the declared field it was probably meant to be)."""
    found: list[tuple[str, str | None]] = []
    _walk(cfg, "", found)
    return found


def _walk(node: Any, path: str, found: list[tuple[str, str | None]]) -> None:
    def name(key: Any) -> str:
        if isinstance(key, int):
            return f"{path}[{key}]"
        return f"{path}.{key}" if path else str(key)

    def stray(key: Any, declared: set[str]) -> tuple[str, str | None]:
        close = difflib.get_close_matches(str(key), sorted(declared), n=1)
        return name(key), name(close[0]) if close else None

    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none():
            return
        schema = OmegaConf.get_type(node)
        declared = _fields(schema)
        for key, child in node.items_ex(resolve=False):
            if path == "" and key == _HYDRA_NODE:
                continue
            if declared is not None and key not in declared:
                found.append(stray(key, declared))
            elif isinstance(child, (DictConfig, ListConfig)):
                _walk(child, name(key), found)
    elif isinstance(node, ListConfig):
        if node._is_missing() or node._is_none():
            return
        for i in range(len(node)):
            _walk(node._get_node(i), name(i), found)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        declared = _fields(type(node))
        for key, child in vars(node).items():
            if key not in declared:
                found.append(stray(key, declared))
            else:
                _walk(child, name(key), found)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _walk(child, name(i), found)
    elif isinstance(node, dict):  # eval.datasets: name -> DatasetCfg; free-form dicts hold none
        for key, child in node.items():
            if dataclasses.is_dataclass(child):
                _walk(child, name(key), found)


def _fields(schema: Any) -> set[str] | None:
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        return {f.name for f in dataclasses.fields(schema)}
    return None


def check_known_keys(cfg: Any) -> None:
    """Raise ConfigError naming every key the schema does not declare (see `unknown_keys`)."""
    stray = _stray_keys(cfg)
    if stray:
        named = ", ".join(
            f"{key} (did you mean {close}?)" if close else key for key, close in stray
        )
        raise ConfigError(
            f"unknown config key{'s' if len(stray) > 1 else ''}: {named}. `--cfg job` prints "
            "every key; a `+key=...` override may only add to a free-form section "
            "(vision.config, llm.config, deepspeed.extra)"
        )


def config_error_lines(error: BaseException) -> list[str] | None:
    """What a config error says, the useful line last and without Hydra's search-path dump;
    None when `error` is not a config error (an ordinary crash keeps its traceback)."""
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(error, ConfigError):
        return str(error).splitlines()
    if isinstance(error, OmegaConfBaseException):
        return [_omegaconf_line(error)]
    if not isinstance(error, HydraException):
        return None
    lines: list[str] = []
    options: list[str] = []
    skipping = False
    cause = error.__cause__
    for line in str(error).splitlines():
        if line.startswith("Config search path:"):
            skipping = True  # Hydra lists its providers; HYDRA_FULL_ERROR=1 still shows them
        elif line.startswith("\t"):
            if not skipping:
                options.append(line.strip())
        elif line.strip():
            skipping = False
            # The schema rejects a `+key` as well: Hydra's hint to add one would only mislead.
            if line.startswith("To append to your config use +") and isinstance(
                cause, (ConfigKeyError, ConfigAttributeError)
            ):
                continue
            lines.append(line)
    if options and lines:  # "Available options in 'llm':" + one tab-indented line each
        lines[-1] = f"{lines[-1]} {', '.join(options)}"
    if isinstance(cause, OmegaConfBaseException):
        lines.append(_omegaconf_line(cause))
    return lines


def _omegaconf_line(error: Exception) -> str:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    line = f"{key}: {first}" if key and key not in first else first
    close = _nearest_key(error)
    return f"{line} (did you mean {close}?)" if close else line


def _nearest_key(error: Exception) -> str | None:
    """For an unknown key (`recipe.micro_batchsize=4`, no `+`), the declared key nearest to it
    (`recipe.micro_batch_size`), as `check_known_keys` says for a `+key`."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(error, (ConfigKeyError, ConfigAttributeError)) or error.key is None:
        return None
    declared = _fields(getattr(error, "object_type", None))
    parent = getattr(error, "parent_node", None)
    if declared is None and isinstance(parent, DictConfig):
        declared = {str(k) for k in parent.keys()}
    close = difflib.get_close_matches(str(error.key), sorted(declared or ()), n=1)
    if not close:
        return None
    full = str(getattr(error, "full_key", None) or error.key)
    return f"{full.rpartition('.')[0]}.{close[0]}" if "." in full else close[0]


def report_config_error(error: BaseException, hint: str | None = None) -> NoReturn:
    """Print a config error's lines to stderr (the useful line last) and exit 1."""
    lines = config_error_lines(error)
    assert lines is not None
    header = f"config error ({hint}):" if hint else "config error:"
    print(header, *lines, sep="\n", file=sys.stderr)
    raise SystemExit(1)


class ValidateOnStartBase(Callback):
    """A Hydra callback that validates the composed config before Hydra creates the output
    directory (and writes the config into it): `on_run_start`, or for a multirun, the overrides
    every job shares in `on_multirun_start` (each job validates its own config again).

    Hydra turns an exception in a callback into a warning and carries on, so a config error is
    reported here and ends the process (SystemExit is not an Exception).
    """

    def validate(self, config: DictConfig) -> None:
        raise NotImplementedError

    def validate_run(self, config: DictConfig) -> None:
        """A single run's check (its output directory is not written yet); by default
        `validate`."""
        self.validate(config)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._validate_or_exit(self.validate_run, config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._validate_or_exit(self.validate, config)

    def _validate_or_exit(self, check: Callable[[DictConfig], None], config: DictConfig) -> None:
        try:
            check(config)
        except Exception as error:  # also OmegaConf's, e.g. an interpolation to a missing key
            if config_error_lines(error) is None:
                raise
            report_config_error(error)


def run_hydra_main(main: Callable[[], Any]) -> None:
    """Call a `@hydra.main` function so that a config error (composition, an unknown key, a value
    out of range) ends the process with its own message as the last lines printed.

    Hydra prints composition errors itself and then its config search path; it raises them
    instead when HYDRA_FULL_ERROR=1, so that is set for the call and the error printed here.
    A user's own HYDRA_FULL_ERROR=1 keeps Hydra's full trace untouched.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as error:
        if config_error_lines(error) is None:
            raise  # not a config error: the ordinary traceback
        report_config_error(error, "HYDRA_FULL_ERROR=1 shows the full trace")
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
