"""The demo's offline 30-class dataset: real images from three installed sources, the data axis
split (common / rare / absent), and a test split disjoint from training."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import logging
import shutil
import socket
import threading
from pathlib import Path

import pytest
from PIL import Image

from llava_ablate.data import mini_classify
from llava_ablate.data.mini_classify import (
    ABSENT,
    DEBIAN_FASHION_DIR,
    FASHION_MD5,
    FASHION_URL,
    RARE,
    build_mini_classify,
    fashion_dir,
)


def test_mini_classify_layout_and_data_axis(tmp_path):
    root = build_mini_classify(
        tmp_path / "mini", train_per_class=6, test_per_class=4, rare_per_class=2
    )
    rows = list(csv.reader((root / "classes.csv").open()))
    keys = {k: (name, group) for k, name, group in rows}
    assert len(keys) == 30 and len({n for n, _ in keys.values()}) == 30
    assert {g for _, g in keys.values()} == {"digit", "clothing", "letter"}
    by_name = {name: k for k, (name, _) in keys.items()}
    test = {p.name: len(list(p.glob("*.png"))) for p in (root / "test").iterdir()}
    assert test == {k: 4 for k in keys}
    common = {p.name for p in (root / "train_common").iterdir()}
    rare = {p.name: len(list(p.glob("*.png"))) for p in (root / "train_rare").iterdir()}
    extra = {p.name for p in (root / "train_extra").iterdir()}
    assert rare == {by_name[n]: 2 for n in RARE}
    assert not common & (set(rare) | {by_name[n] for n in ABSENT})  # absent: never in base
    assert extra == {by_name[n] for n in RARE + ABSENT} and len(common) == 20
    image = Image.open(next((root / "test" / by_name["letter O"]).glob("*.png")))
    assert image.size == (32, 32) and image.mode == "RGB"
    # Train and test images never coincide (digits are split by index, others drawn apart).
    for key in ("digit_seven", "t-shirt"):
        folder = "train_common" if key in common else "train_extra"
        train_bytes = {p.read_bytes() for p in (root / folder / key).glob("*.png")}
        assert not train_bytes & {p.read_bytes() for p in (root / "test" / key).glob("*.png")}
    assert build_mini_classify(root) == root  # idempotent


@pytest.fixture
def fashion_server(tmp_path):
    """An HTTP server on this machine serving a copy of the Fashion-MNIST files (a mirror)."""
    served = tmp_path / "served"
    shutil.copytree(DEBIAN_FASHION_DIR, served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def _md5s(root: Path) -> dict[str, str]:
    return {name: hashlib.md5((root / name).read_bytes()).hexdigest() for name in FASHION_MD5}


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(), reason="needs Debian's files to serve")
def test_fashion_mnist_is_fetched_and_checked_where_it_is_missing(
    fashion_server, tmp_path, monkeypatch, caplog
):
    url, served = fashion_server
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FASHION_MNIST_DIR", str(empty))
    monkeypatch.setenv("FASHION_MNIST_URL", url)
    # The mirror's files are not the published ones (Debian recompressed them): refused, and
    # nothing half-fetched is left under a real name.
    with pytest.raises(FileNotFoundError, match="MD5 .* the published checksum is"):
        fashion_dir()
    assert not any(empty.glob("*.gz"))
    # With the mirror's own checksums published, the same fetch goes through, and says so.
    monkeypatch.setattr(mini_classify, "FASHION_MD5", _md5s(served))
    with caplog.at_level(logging.INFO, logger=mini_classify.__name__):
        assert fashion_dir() == empty
    assert f"fetching the official files from {url}" in caplog.text
    assert _md5s(empty) == _md5s(served)
    images, labels = mini_classify._fashion("test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


def test_fashion_mnist_offline_error_names_every_way(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.socket() as s:  # a port nothing listens on: the network is unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FASHION_MNIST_DIR", str(empty))
    monkeypatch.setenv("FASHION_MNIST_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(FileNotFoundError) as err:
        build_mini_classify(tmp_path / "mini", train_per_class=2, test_per_class=1)
    message = str(err.value)
    for way in ("apt-get install dataset-fashion-mnist", "FASHION_MNIST_DIR", FASHION_URL):
        assert way in message, way
    assert str(empty) in message and not (tmp_path / "mini").exists()  # nothing half-built
