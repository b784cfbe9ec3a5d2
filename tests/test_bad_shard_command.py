"""A damaged shard's message names a rebuild command that works: the run's own overrides (a
user's config folder on hydra.searchpath, paths.*, data.samples_per_shard) are in it, and
running it restores the shard."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llava_ablate.cli import main as cli

from datagen import write_llava_source

ROOT = Path(__file__).resolve().parents[1]


def test_the_printed_rebuild_command_rebuilds_the_damaged_shard(tmp_path, capsys):
    (tmp_path / "my_conf/data").mkdir(parents=True)
    (tmp_path / "my_conf/data/my_mix.yaml").write_text(
        "name: my_mix\nstage: finetune\nnum_workers: 1\nsources:\n"
        "  - {name: s, path: '${paths.data_root}/s.json', image_root: '${paths.data_root}'}\n"
    )
    write_llava_source(tmp_path / "d", "s", 30)
    overrides = [
        "+experiment=tiny_finetune",
        "recipe.init_from=null",
        "data=my_mix",
        f"hydra.searchpath=[file://{tmp_path}/my_conf]",
        f"paths.data_root={tmp_path}/d",
        f"paths.shards_root={tmp_path}/sh",
        "data.samples_per_shard=10",  # not the default 1000: 3 shards
        f"train.runs_root={tmp_path}/runs",
    ]
    cli(["data", "build", *overrides])
    tar = tmp_path / "sh/s/s-000001.tar"
    intact = tar.read_bytes()
    tar.write_bytes(intact[:5000])  # a partial copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode != 0
    message = run.stderr.strip().splitlines()[-1]
    assert "s-000001.tar is damaged" in message, run.stderr[-2000:]
    command = shlex.split(re.search(r"rebuild it with `([^`]+)`", message).group(1))
    assert command[:3] == ["llava-ablate", "data", "build"]
    assert any(a.startswith("hydra.searchpath=") for a in command)
    assert "data.samples_per_shard=10" in command and f"paths.shards_root={tmp_path}/sh" in command
    # The command as printed (its arguments through the llava-ablate entry point) restores it.
    cli(command[1:])
    assert tar.read_bytes() == intact
    manifest = json.loads((tmp_path / "sh/s/manifest.json").read_text())
    assert len(manifest["shards"]) == 3
    # What it used to print cannot even compose the mixture (the user's folder is missing).
    with pytest.raises(SystemExit):
        cli(["data", "build", "data=my_mix"])
    assert "Could not find 'data/my_mix'" in capsys.readouterr().err
