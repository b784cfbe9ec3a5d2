"""The run's log, where users look for it: `train.log` in the run directory, beside the terminal.

Rank 0 writes its info and every rank its warnings and errors (each line names its rank), the
libraries' too (transformers', DeepSpeed's, Python's `warnings`); every start appends the
command and the resolved config's hash, so a resumed run keeps one log. Ranks append to the
same file: each record is one `write` on a file opened with O_APPEND, so lines do not
interleave on a local disk (on NFS, across nodes, they may).

An error that ends the run is printed on the terminal by Python (torch.distributed prefixes each
line with the rank) and written here by `log_failure`.
"""

from __future__ import annotations

import logging
import shlex
import sys
import traceback
import warnings
from pathlib import Path

LOG_NAME = "train.log"
_CONSOLE_FORMAT = "%(asctime)s %(name)s: %(message)s"
_FILE_FORMAT = "%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("llava_ablate.train")

_file_handler: logging.FileHandler | None = None


def setup_run_logging(run_dir: Path, rank: int) -> Path:
    """Log to the terminal and append to `<run_dir>/train.log`: INFO on rank 0, WARNING on
    the other ranks. Replaces the handlers Hydra set up (its job log lives in its own output
    directory, which is the run directory only for a single run). Returns the log's path."""
    import transformers

    global _file_handler
    run_dir.mkdir(parents=True, exist_ok=True)
    level = logging.INFO if rank == 0 else logging.WARNING
    path = run_dir / LOG_NAME
    if _file_handler is not None:
        _file_handler.close()
    _file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    _file_handler.setFormatter(logging.Formatter(_FILE_FORMAT.format(rank=rank)))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(_CONSOLE_FORMAT))
    logging.basicConfig(level=level, handlers=[console, _file_handler], force=True)
    # `warnings.warn` -> the "py.warnings" logger -> both. Off first: captureWarnings(True) is a
    # no-op while a stale capture is recorded, though someone (pytest, an earlier in-process
    # run) may have put `warnings.showwarning` back since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    # transformers and DeepSpeed log through handlers of their own that bypass the root logger.
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_default_handler()
    transformers.logging.enable_propagation()
    transformers.logging.disable_progress_bar()
    deepspeed_logger = logging.getLogger("DeepSpeed")
    for handler in list(deepspeed_logger.handlers):
        if isinstance(handler, logging.FileHandler):  # an earlier setup's, in this process
            deepspeed_logger.removeHandler(handler)
    file_only_warnings = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_only_warnings.setLevel(logging.WARNING)
    file_only_warnings.setFormatter(_file_handler.formatter)
    deepspeed_logger.addHandler(file_only_warnings)
    # DeepSpeed still calls torch.distributed APIs that torch 2.13 deprecates, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    return path


def log_start(run_dir: Path, config_hash: str) -> None:
    """The head of one attempt: what was run, and which config (rank 0's INFO)."""
    log.info("command: %s", shlex.join(sys.orig_argv))
    log.info("run %s: config hash %s", run_dir, config_hash)


def log_failure(error: BaseException) -> None:
    """Write the error that ends this rank's run, with its traceback, to train.log only (the
    terminal gets it from Python itself)."""
    if _file_handler is None:
        return
    text = "".join(traceback.format_exception(error)).rstrip()
    record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, "run failed:\n%s",
                               (text,), None)  # fmt: skip
    _file_handler.handle(record)
    _file_handler.flush()
