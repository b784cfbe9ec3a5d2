"""The lmms-eval bridge: our frozen questions as an lmms-eval task (read by lmms-eval's own task
loader), lmms-eval's real runner with its stock `llava_hf` on a tiny export of ours (the same
text and choices as our `generate` scorer), its per-sample log imported back and paired by
`llava-ablate report`, and every mismatch refused.

lmms-eval runs from `.venv-lmms` (`make lmms`; LLAVA_LMMS_PYTHON overrides): it cannot share the
project venv (see the Makefile). CI sets LLAVA_REQUIRE_LMMS=1, so these tests fail, never skip,
without it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import eval_fixtures as fx
import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from llava_ablate.data.images import mean_colour, pad_to_square
from llava_ablate.eval.layouts import load_dataset
from llava_ablate.eval.lmms_bridge import (
    BridgeError,
    export_task,
    import_samples,
    read_samples,
    read_task_dir,
)
from llava_ablate.eval.questions import build_question_set, mcq_prompt
from llava_ablate.eval_config import DatasetCfg, EvalCfg, QuestionsCfg, StatsCfg

from conftest import ROOT, build_tiny


def lmms_python() -> str:
    python = os.environ.get("LLAVA_LMMS_PYTHON", str(ROOT / ".venv-lmms" / "bin" / "python"))
    if not Path(python).exists():
        msg = f"no lmms-eval environment at {python} (make lmms)"
        if os.environ.get("LLAVA_REQUIRE_LMMS"):  # set by `make test` and CI
            pytest.fail(msg)
        # Only a bare `pytest` without `make lmms` gets here: lmms-eval cannot live in .venv
        # (its pins clash with ours), so its separate venv may simply not be built yet.
        pytest.skip(msg)
    return python


def _lmms_env(tmp: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # utils.py imports our parser
        "HF_HOME": str(tmp / "hf"),  # lmms-eval's datasets cache, per test
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_lmms_eval(tmp: Path, model: str, model_args: str | None, task: str, include: Path,
                  out: Path, *extra: str) -> subprocess.CompletedProcess:  # fmt: skip
    cmd = [lmms_python(), "-m", "lmms_eval", "--model", model, "--tasks", task,
           "--include_path", str(include), "--log_samples", "--output_path", str(out),
           "--batch_size", "1", *extra]  # fmt: skip
    if model_args:
        cmd += ["--model_args", model_args]
    return subprocess.run(cmd, env=_lmms_env(tmp), cwd=tmp, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Non-square images (so padding shows) in 3 classes."""
    root = tmp_path_factory.mktemp("wide")
    for c, name in enumerate(["cat", "dog", "bird"]):
        (root / name).mkdir()
        for i in range(2):
            arr = np.random.default_rng(10 * c + i).integers(0, 255, (12, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return load_dataset("wide", DatasetCfg(kind="image_folder", root=str(root)))


def _utils(task_dir: Path):
    spec = importlib.util.spec_from_file_location("lmms_task_utils", task_dir / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_writes_the_identical_questions(wide, tmp_path):
    qcfg = QuestionsCfg(question="Which animal?")
    qs = build_question_set(wide, qcfg)
    task = export_task(qs, wide, qcfg, tmp_path, max_new_tokens=5, pad_fill=(1, 2, 3))
    assert task.tasks == {"generate": "llava_ablate_wide_generate",
                          "choice": "llava_ablate_wide_choice"}  # fmt: skip
    back = read_task_dir(task.directory)
    assert back.qset.fingerprint() == qs.fingerprint() == task.fingerprint
    docs = [json.loads(x) for x in (task.directory / "docs.jsonl").read_text().splitlines()]
    samples = wide.by_id()
    utils = _utils(task.directory)
    for q, doc in zip(qs.questions, docs, strict=True):
        assert (doc["qid"], doc["options"], doc["answer"]) == (q.qid, q.options, q.answer)
        assert doc["prompt"] == mcq_prompt(q, qcfg) == utils.doc_to_text(doc)
        # The pixels our evaluator feeds with image_aspect=pad and this fill colour.
        want = np.asarray(pad_to_square(wide.load_image(samples[q.sample_id]), (1, 2, 3)))
        (got,) = utils.doc_to_visual(doc)
        assert got.size == (20, 20) and np.array_equal(np.asarray(got), want)
        # lmms-eval-side scoring uses our parser and the lowest loss.
        assert utils.process_generate(doc, [f"({q.answer})"])["accuracy"] == 1.0
        assert utils.process_generate(doc, ["no idea"])["llava_ablate"]["choice"] is None
        losses = [f"({0.1 if o == q.label else 2.0}, False)" for o in q.options]
        assert utils.process_choice(doc, losses)["llava_ablate"]["choice"] == q.answer
    gen = (task.directory / "llava_ablate_wide_generate.yaml").read_text()
    assert "max_new_tokens: 5" in gen and "doc_to_visual: !function utils.doc_to_visual" in gen


def test_lmms_eval_task_loader_reads_the_export(wide, tmp_path):
    """lmms-eval's own TaskManager builds both tasks from the folder: docs, prompt, images."""
    qs = build_question_set(wide, QuestionsCfg())
    task = export_task(qs, wide, QuestionsCfg(), tmp_path / "tasks")
    script = f"""
import json
from lmms_eval.tasks import TaskManager, get_task_dict
manager = TaskManager(include_path={str(tmp_path / "tasks")!r})
names = sorted({task.tasks!r}.values())
assert set(names) <= set(manager.all_tasks), names
out = {{}}
for name, t in get_task_dict(names, manager).items():
    docs = list(t.test_docs())
    out[name] = dict(type=t.OUTPUT_TYPE, n=len(docs), text=t.doc_to_text(docs[0]),
                     size=list(t.doc_to_visual(docs[0])[0].size),
                     choices=t.doc_to_choice(docs[0]) if t.OUTPUT_TYPE == "multiple_choice" else None)
print("RESULT" + json.dumps(out))
"""
    proc = subprocess.run([lmms_python(), "-c", script], env=_lmms_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT")[-1])
    gen, choice = out[task.tasks["generate"]], out[task.tasks["choice"]]
    assert gen["type"] == "generate_until" and choice["type"] == "multiple_choice"
    assert gen["n"] == choice["n"] == 6
    assert gen["text"] == mcq_prompt(qs.questions[0], QuestionsCfg())
    assert gen["size"] == [20, 12]  # exported as read: no pad_fill
    assert choice["choices"] == ["A", "B", "C"]


def _log_line(doc_id: int, doc: dict, response, fingerprint: str | None = None) -> str:
    """One line as lmms-eval 0.7.3 writes it (fields copied from a real log)."""
    row = {"doc_id": doc_id, "target": doc["answer"], "filtered_resps": response,
           "llava_ablate": {"qid": doc["qid"], "fingerprint": fingerprint or doc["fingerprint"],
                            "choice": None},
           "input": doc["prompt"]}  # fmt: skip
    return json.dumps(row) + "\n"


def test_import_refuses_what_does_not_match(wide, tmp_path):
    qs = build_question_set(wide, QuestionsCfg())
    task = export_task(qs, wide, QuestionsCfg(), tmp_path / "tasks")
    docs = [json.loads(x) for x in (task.directory / "docs.jsonl").read_text().splitlines()]
    td = read_task_dir(task.directory)

    def write(lines: list[str]) -> Path:
        path = tmp_path / "samples.jsonl"
        path.write_text("".join(lines))
        return path

    good = [_log_line(i, d, f"The answer is ({d['answer']})") for i, d in enumerate(docs)]
    assert [s.response for s in read_samples(write(good), td)][0].endswith(f"({docs[0]['answer']})")
    with pytest.raises(BridgeError, match="different questions cannot be paired"):
        read_samples(write([_log_line(0, docs[0], "A", "0123456789abcdef")] + good[1:]), td)
    with pytest.raises(BridgeError, match="5 of 6 questions"):
        read_samples(write(good[:5]), td)
    with pytest.raises(BridgeError, match="differs from"):  # doc_id pointing at another row
        read_samples(write([_log_line(1, docs[0], "A")] + good[1:]), td)
    with pytest.raises(BridgeError, match="appears twice"):
        read_samples(write(good + good[:1]), td)
    with pytest.raises(BridgeError, match="no `llava_ablate` entry"):
        read_samples(write(['{"doc_id": 0, "filtered_resps": "A"}\n']), td)
    with pytest.raises(BridgeError, match="2 losses for 3 options"):
        read_samples(write([_log_line(0, docs[0], ["(1.0, False)", "(2.0, False)"])]), td)
    # A task directory whose frozen set was edited after export.
    qset = json.loads((task.directory / "question_set.json").read_text())
    qset["questions"][0]["options"].reverse()
    (task.directory / "question_set.json").write_text(json.dumps(qset))
    with pytest.raises(BridgeError, match="was edited"):
        import_samples(write(good), task.directory, tmp_path / "res", EvalCfg())


def _tiny_export(cache_dir: Path, path: Path) -> Path:
    """A tiny LLaVA saved the way our export saves it (stock from_pretrained + AutoProcessor)."""
    from llava_ablate.model.export import save_processor

    v = build_tiny(cache_dir)
    v.model.save_pretrained(path)
    save_processor(v.processor, path)
    return path


def _cli(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "llava_ablate.cli", *args], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # ~2-3 min on 2 busy cores: evaluate.py, lmms-eval's runner, CLI, report
def test_llava_hf_generate_agrees_with_our_generate_scorer(cache_dir, tmp_path):
    root = fx.digits_folder(tmp_path / "digits", per_class=2)
    export = _tiny_export(cache_dir, tmp_path / "tiny" / "export")
    overrides = ["eval/datasets=[image_folder]", f"eval.datasets.image_folder.root={root}",
                 f"eval.questions.dir={tmp_path / 'questions'}", "eval.scoring.max_new_tokens=4",
                 "eval.stats.bootstrap=200"]  # fmt: skip
    _cli("lmms", "export-task", "--out", str(tmp_path / "tasks"), *overrides, cwd=tmp_path)
    # Ours: evaluate.py's generate scorer on the same frozen questions, one question a batch.
    ours = tmp_path / "ours"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            *overrides,
            f"model.path={export}",
            "model.dtype=fp32",
            "eval.scoring.scorers=[generate]",
            "eval.scoring.batch_size=1",
            f"out_dir={ours}",
        ],  # fmt: skip
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Theirs: lmms-eval's stock llava_hf (its default, chat-template path) on the exported task.
    task_dir = tmp_path / "tasks" / "llava_ablate_image_folder"
    run = run_lmms_eval(tmp_path, "llava_hf",
                        f"pretrained={export},device=cpu,device_map=cpu,dtype=float32",
                        "llava_ablate_image_folder_generate", tmp_path / "tasks", tmp_path / "lmms")  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    (samples,) = (tmp_path / "lmms").rglob("*_samples_llava_ablate_image_folder_generate.jsonl")
    theirs = tmp_path / "theirs"
    _cli("lmms", "import", "--samples", str(samples), "--task-dir", str(task_dir), "--out", str(theirs),
         "--model-name", "tiny-lmms", "eval.stats.bootstrap=200", cwd=tmp_path)  # fmt: skip

    def preds(d: Path) -> dict:
        lines = (d / "image_folder" / "predictions.jsonl").read_text().splitlines()
        return {p["qid"]: p for p in map(json.loads, lines) if p["scorer"] == "generate"}

    a, b = preds(ours), preds(theirs)
    assert len(a) == len(b) == 20 and set(a) == set(b)
    for qid in a:  # same prompt, image and greedy decoding: the same text, the same choice
        assert a[qid]["raw"].strip() == b[qid]["raw"], qid
        assert a[qid]["pred"] == b[qid]["pred"] and a[qid]["correct"] == b[qid]["correct"]
    m_ours = json.loads((ours / "image_folder/metrics.json").read_text())
    m_theirs = json.loads((theirs / "image_folder/metrics.json").read_text())
    assert m_theirs["question_set"]["fingerprint"] == m_ours["question_set"]["fingerprint"]
    assert m_theirs["lmms_eval"]["model"] == "llava_hf"
    # lmms-eval's own accuracy (our parser inside utils.py) is the imported one.
    (results,) = samples.parent.glob("*_results.json")
    lmms_acc = json.loads(results.read_text())["results"]["llava_ablate_image_folder_generate"]
    assert lmms_acc["accuracy,none"] == m_theirs["scorers"]["generate"]["accuracy"]["value"]
    # `report` pairs the two (McNemar on the shared questions); identical answers: no change.
    out = _cli("report", str(ours), str(theirs), "--scorer", "generate", "--bootstrap", "200",
               "--out", str(tmp_path / "report.html"), cwd=tmp_path)  # fmt: skip
    assert "1 comparison(s) (+0 on hard classes)" in out  # llava-ablate report's summary line
    from llava_ablate.report.command import build

    args = type("A", (), {"paths": [str(ours), str(theirs)], "scorer": "generate",
                          "baseline": None, "bootstrap": 200, "seed": 0})  # fmt: skip
    _, _, items = build(args)
    (item,) = items
    assert item.comparison.delta == 0 and item.comparison.mcnemar_p == 1.0
    # A task exported from another question set refuses this log (padded with the export's
    # mean colour this time, as evaluate.py's image_aspect=pad).
    processor = AutoImageProcessor.from_pretrained(export)
    _cli("lmms", "export-task", "--out", str(tmp_path / "other"), *overrides,
         "eval.questions.seed=7", "--pad-fill-from", str(export), cwd=tmp_path)  # fmt: skip
    info = json.loads((tmp_path / "other/llava_ablate_image_folder/bridge.json").read_text())
    assert info["image_aspect"] == "pad" and info["pad_fill"] == list(mean_colour(processor))
    with pytest.raises(BridgeError, match="different questions"):
        import_samples(samples, tmp_path / "other" / "llava_ablate_image_folder",
                       tmp_path / "x", EvalCfg(stats=StatsCfg(bootstrap=200)))  # fmt: skip


@pytest.mark.slow  # ~70 s: lmms-eval's runner twice
def test_choice_task_through_lmms_eval(cache_dir, wide, tmp_path):
    """The multiple-choice task through lmms-eval's runner and back. Its `dummy` model (every
    option's loss 0.0) is the stock model whose log-likelihood runs here: see the second half."""
    qs = build_question_set(wide, QuestionsCfg())
    task = export_task(qs, wide, QuestionsCfg(), tmp_path / "tasks")
    run = run_lmms_eval(tmp_path, "dummy", None, task.tasks["choice"], tmp_path / "tasks",
                        tmp_path / "lmms")  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    (samples,) = (tmp_path / "lmms").rglob(f"*_samples_{task.tasks['choice']}.jsonl")
    m = import_samples(samples, task.directory, tmp_path / "res",
                       EvalCfg(stats=StatsCfg(bootstrap=200)), model_name="dummy")  # fmt: skip
    assert m["lmms_eval"]["output_type"] == "multiple_choice" and "likelihood" in m["scorers"]
    logged = {r["llava_ablate"]["qid"]: r["llava_ablate"]["choice"]
              for r in map(json.loads, samples.read_text().splitlines())}  # fmt: skip
    preds = [
        json.loads(x)
        for x in (tmp_path / "res/wide/predictions.jsonl").read_text().split("\n")
        if x
    ]
    # Equal losses: the earliest letter, in lmms-eval's argmin and in our import alike.
    assert len(preds) == 6 and all(p["pred"] == "A" == logged[p["qid"]] for p in preds)
    (results,) = samples.parent.glob("*_results.json")
    lmms_acc = json.loads(results.read_text())["results"][task.tasks["choice"]]["accuracy,none"]
    want = np.mean([q.answer == "A" for q in qs.questions])
    assert m["scorers"]["likelihood"]["accuracy"]["value"] == lmms_acc == want
    # lmms-eval 0.7.3's stock llava_hf cannot score log-likelihoods under transformers 5: it
    # tokenises the context alone through the processor, `<image>` and no image, which
    # transformers 5 refuses. When this starts to pass upstream, test llava_hf here instead.
    export = _tiny_export(cache_dir, tmp_path / "tiny" / "export")
    run = run_lmms_eval(tmp_path, "llava_hf",
                        f"pretrained={export},device=cpu,device_map=cpu,dtype=float32",
                        task.tasks["choice"], tmp_path / "tasks", tmp_path / "lmms_hf",
                        "--force_simple")  # fmt: skip
    assert "Found 1 <image> tokens in the text but no images were passed" in run.stdout + run.stderr
    assert not list((tmp_path / "lmms_hf").rglob("*_samples_*.jsonl"))
