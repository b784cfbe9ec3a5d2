"""Concept exposure: phrase matching (multi-word, plurals, synonyms) and the CLI end to end."""

from __future__ import annotations

import csv
import json

from llava_ablate.cli import main
from llava_ablate.data.exposure import Concept, PhraseIndex, exposure_table, load_concepts


def test_phrase_index_matches_words_phrases_plurals_and_synonyms():
    concepts = [
        Concept("black-footed ferret", ["black-footed ferret", "black footed ferret"]),
        Concept("fox", ["fox"]),
        Concept("butterfly", ["butterfly"]),
        Concept("cat", ["cat", "kitten"]),
    ]
    index = PhraseIndex(concepts)
    text = "Two Black-footed ferrets, a fox and foxes; butterflies. A kitten, not a catalog."
    assert index.mentions(text) == {0: 1, 1: 2, 2: 1, 3: 1}


def test_a_longer_name_is_not_also_a_mention_of_the_shorter_name_inside_it():
    """Leftmost-longest: a t-shirt is no shirt, sea lions are no lions (the demo's rare class
    `shirt` was counted 63 times in demo_base, 60 of them inside "t-shirt")."""
    names = ["shirt", "t-shirt", "sea lion", "lion"]
    index = PhraseIndex([Concept(n, [n]) for n in names])
    text = "A t-shirt. A shirt. Two sea lions and a lion. T shirts."
    assert index.mentions(text) == {0: 1, 1: 2, 2: 1, 3: 1}
    # Two classes sharing a phrase both count it, as before.
    twins = PhraseIndex([Concept("maillot", ["maillot"]), Concept("tank suit", ["maillot"])])
    assert twins.mentions("a maillot") == {0: 1, 1: 1}


def test_exposure_table_counts_samples_and_mentions(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("dog\ntabby cat,tabby;tiger cat\nferret\n")
    concepts = load_concepts(names)
    assert concepts[1].phrases == ["tabby cat", "tabby", "tiger cat"]
    rows = exposure_table(["a dog and a dog", "a tabby", "dogs chasing a tiger cat"], concepts)
    assert rows == [
        {"class_name": "dog", "exposure": 2, "mentions": 3},
        {"class_name": "tabby cat", "exposure": 2, "mentions": 2},
        {"class_name": "ferret", "exposure": 0, "mentions": 0},
    ]


def test_cli_builds_a_mixture_and_writes_its_exposure(tmp_path, monkeypatch, capsys):
    from llava_ablate.data.toy_digits import build_toy_digits

    monkeypatch.setenv("LLAVA_CACHE_DIR", str(tmp_path))
    build_toy_digits(tmp_path / "toy_digits")
    main(["data", "build", "data=toy_instruct", "llm=tiny_llama", "vision=tiny_clip"])
    out = capsys.readouterr().out
    assert "toy_digit_instruct" in out and "265" in out
    manifest = json.loads((tmp_path / "shards/toy_digit_instruct/manifest.json").read_text())
    assert manifest["text_tokens"]["max"] > manifest["text_tokens"]["min"] > 0
    (tmp_path / "classes.txt").write_text("seven,7\nzero\nferret\n")
    main(
        [
            "data",
            "exposure",
            "data=toy_instruct",
            "--classes",
            str(tmp_path / "classes.txt"),
            "--out",
            str(tmp_path / "exposure.csv"),
        ]
    )
    rows = {r["class_name"]: r for r in csv.DictReader((tmp_path / "exposure.csv").open())}
    instruct = json.loads((tmp_path / "toy_digits/instruct.json").read_text())
    sevens = sum("seven" in json.dumps(r["conversations"]) for r in instruct)
    assert int(rows["seven"]["exposure"]) == sevens > 0
    assert rows["ferret"]["exposure"] == "0"
