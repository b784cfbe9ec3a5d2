"""A user's own LLM, vision tower, mixture and grid, in a folder of theirs, found through Hydra's
search path from their own working directory -- the package's conf/ untouched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from llava_ablate.cli import main as cli
from llava_ablate.config import CONF_DIR, ConfigError, compose_config, to_object
from llava_ablate.launch.grid import expand, load_grid
from llava_ablate.launch.plan import compose_job

SEARCHPATH = "hydra.searchpath=[file://./my_conf]"  # relative: to the working directory


def write_user_conf(root: Path) -> None:
    """my_conf/{llm,vision,data,grid}/: new options of our groups, one grid over them."""
    files = {
        "llm/my_llm.yaml": (CONF_DIR / "llm/tiny_qwen2.yaml")
        .read_text()
        .replace("name: tiny_qwen2", "name: my_llm")
        .replace("hidden_size: 64", "hidden_size: 96"),
        "vision/my_tower.yaml": (CONF_DIR / "vision/tiny_clip.yaml")
        .read_text()
        .replace("name: tiny_clip", "name: my_tower")
        .replace("num_hidden_layers: 2", "num_hidden_layers: 3"),
        "data/my_mix.yaml": (CONF_DIR / "data/toy_captions.yaml")
        .read_text()
        .replace("name: toy_captions", "name: my_mix")
        .replace("samples_per_shard: 64", "samples_per_shard: 32"),
        "grid/my_grid.yaml": textwrap.dedent(
            """\
            name: my_grid
            axes:
              llm: [tiny_llama, my_llm]
            common: [+experiment=tiny_align, vision=my_tower, data=my_mix, recipe.max_steps=8]
            gpu: cpu
            """
        ),
    }
    for name, text in files.items():
        (root / "my_conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "my_conf" / name).write_text(text)


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    write_user_conf(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_users_own_groups_compose_through_the_search_path(user_dir):
    overrides = ["+experiment=tiny_align", "llm=my_llm", "vision=my_tower", "data=my_mix"]
    cfg = to_object(compose_config([*overrides, SEARCHPATH]))
    assert (cfg.llm.name, cfg.vision.name, cfg.data.name) == ("my_llm", "my_tower", "my_mix")
    assert cfg.llm.config["hidden_size"] == 96 and cfg.vision.config["num_hidden_layers"] == 3
    assert cfg.data.samples_per_shard == 32
    # Our own options stay reachable beside them and win a name clash (README says: new names).
    clash = user_dir / "my_conf/llm/tiny_qwen2.yaml"
    clash.write_text((user_dir / "my_conf/llm/my_llm.yaml").read_text())
    assert to_object(compose_config(["llm=tiny_qwen2", SEARCHPATH])).llm.config["hidden_size"] == 64
    assert not (CONF_DIR / "llm/my_llm.yaml").exists()
    with pytest.raises(ConfigCompositionException, match="Could not find 'llm/my_llm'"):
        compose_config(["llm=my_llm"])  # without the search path: not found


def test_plan_a_users_grid_from_their_directory(user_dir, capsys):
    grid = load_grid("my_grid", runs_root="runs", overrides=[SEARCHPATH])
    jobs = expand(grid)
    assert [j.name for j in jobs] == ["llm=tiny_llama", "llm=my_llm"]
    cfg, _ = compose_job(jobs[1], grid, [SEARCHPATH])  # exactly what train.py will compose
    assert cfg.llm.config["hidden_size"] == 96 and cfg.vision.name == "my_tower"
    cli(["plan", "my_grid", SEARCHPATH, "--runs-root", "runs"])
    out = capsys.readouterr().out
    assert "grid my_grid: 2 jobs" in out and "llm=my_llm" in out
    with pytest.raises(ConfigError, match="no grid named 'my_grid'.*tiny_2x2"):
        load_grid("my_grid")  # without the search path, only ours


def test_train_command_line_takes_the_search_path(user_dir):
    """The same override on train.py's own command line (Hydra's --cfg job: nothing runs)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llava_ablate.cli",
            "train",
            "llm=my_llm",
            SEARCHPATH,
            "--cfg",
            "job",
        ],
        cwd=user_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "name: my_llm" in out.stdout and "hidden_size: 96" in out.stdout
