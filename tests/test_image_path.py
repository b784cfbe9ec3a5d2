"""The fast image path: images stored no larger than the tower reads them (data.max_image_side),
shards built too small refused, JPEG draft decoding close to the full decode, bad images still
counted skips."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from sklearn.datasets import load_sample_image
from transformers import CLIPImageProcessorPil, LlavaOnevisionImageProcessorPil

from llava_ablate.config import SourceCfg, VisionCfg
from llava_ablate.data.encode import EncodeOptions, SampleEncoder, Skip, Tokenized
from llava_ablate.data.images import (
    decode_rgb,
    mean_colour,
    pad_to_square,
    shrink_encoded,
    tower_side,
)
from llava_ablate.data.mixture import check_image_side, open_mixture
from llava_ablate.data.shards import StaleShards, build_mixture, build_source
from llava_ablate.model.build import shard_image_side

from datagen import data_cfg

CONVO = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A photo."}]


def _encoded(size: tuple[int, int], fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BICUBIC).save(buf, fmt)
    return buf.getvalue()


def _source(root, images: dict[str, bytes]) -> SourceCfg:
    (root / "img").mkdir(parents=True)
    rows = []
    for name, data in images.items():
        (root / "img" / name).write_bytes(data)
        rows.append({"id": name, "image": f"img/{name}", "conversations": CONVO})
    (root / "data.json").write_text(json.dumps(rows))
    return SourceCfg(name="photos", path=str(root / "data.json"), image_root=str(root))


def _stored(shard_dir) -> dict[str, tuple[str, Image.Image, bytes]]:
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    out = {}
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        meta = json.loads(sample["json"])
        key = meta["images"][0]
        out[meta["id"]] = (key, Image.open(io.BytesIO(sample[key])), sample[key])
    return out


def test_max_image_side_stores_large_images_smaller_and_leaves_the_originals(tmp_path):
    images = {
        "big.jpg": _encoded((800, 600), "JPEG"),
        "tall.png": _encoded((200, 500), "PNG"),
        "small.jpg": _encoded((120, 96), "JPEG"),
        "corrupt.jpg": _encoded((800, 600), "JPEG")[:300],  # header intact, data cut
    }
    src = _source(tmp_path / "raw", images)
    before = {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "raw/img").iterdir()
    }
    manifest = build_source(
        src, tmp_path / "shards", samples_per_shard=8, workers=1, max_image_side=256
    )
    stored = _stored(tmp_path / "shards/photos")
    assert stored["big.jpg"][1].format == "JPEG" and stored["big.jpg"][1].size == (256, 192)
    assert stored["tall.png"][1].format == "PNG" and stored["tall.png"][1].size == (102, 256)
    assert stored["small.jpg"][2] == images["small.jpg"]  # no larger already: the same bytes
    assert manifest["max_image_side"] == 256 and manifest["images_reencoded"] == 2
    assert manifest["image_width"]["max"] == 256 and manifest["image_height"]["max"] == 256
    assert manifest["skipped"] == {"corrupt_image": 1}  # still skipped and counted
    assert json.loads((tmp_path / "shards/photos/manifest.json").read_text()) == manifest
    after = {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "raw/img").iterdir()
    }
    assert after == before  # originals untouched


def test_shards_built_smaller_than_the_run_reads_are_refused(tmp_path):
    src = _source(tmp_path / "raw", {"big.jpg": _encoded((1600, 1200), "JPEG")})
    data = data_cfg("m", [src], tmp_path / "shards", samples_per_shard=8)
    build_mixture(data, workers=1, max_image_side=336)
    mixture = open_mixture(data, seed=0)
    check_image_side(mixture, 336)
    check_image_side(mixture, 224)  # a smaller tower reads them as it would the originals
    for needed in (1152, None):  # an anyres run; a run that wants the originals
        with pytest.raises(StaleShards, match=r"max_image_side=336 .*--force.*side=336 to train"):
            check_image_side(mixture, needed)
    with pytest.raises(StaleShards, match=r"images up to 1152 px"):
        build_mixture(data, workers=1, max_image_side=1152)  # without --force: refused
    kept = build_mixture(data, workers=1, max_image_side=224)["photos"]  # covered: kept
    assert kept["max_image_side"] == 336
    rebuilt = build_mixture(data, workers=1, max_image_side=1152, force=True)["photos"]
    assert rebuilt["max_image_side"] == 1152 and rebuilt["image_width"]["max"] == 1152
    check_image_side(open_mixture(data, seed=0), 1152)


def test_auto_side_comes_from_the_tower_and_anyres_grid():
    tiny = VisionCfg(name="t", arch="clip", config={"image_size": 48, "patch_size": 8})
    assert shard_image_side(tiny, "auto") == 48  # pad-to-square: the tower's size
    resize = VisionCfg(name="t", arch="clip", config={"image_size": 48}, image_aspect="resize")
    assert shard_image_side(resize, "auto") == 96  # shorter side kept up to a 2:1 aspect
    assert shard_image_side(tiny, 1152) == 1152 and shard_image_side(tiny, None) is None
    anyres = LlavaOnevisionImageProcessorPil(
        image_grid_pinpoints=[[384, 384], [384, 768], [768, 768], [1152, 768], [1152, 1152]]
    )
    assert tower_side(anyres, pad=True) == 1152


def _psnr(a: torch.Tensor, b: torch.Tensor, processor) -> float:
    """PSNR of two processor outputs, on the [0, 1] intensities before normalisation."""
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    mse = float((((a - b) * std) ** 2).mean())
    return 10 * math.log10(1 / mse)


@pytest.mark.parametrize(
    "photo,upscale,side",
    [("china.jpg", 1, 160), ("flower.jpg", 1, 160), ("china.jpg", 3, 336), ("flower.jpg", 3, 336)],
)
def test_fast_path_output_stays_close_to_the_full_decode(photo, upscale, side):
    """Tolerance: PSNR >= 30 dB against the full-decode path's tensor (on [0, 1] intensities),
    the usual bound for "visually near-lossless" 8-bit images (a photo saved at JPEG quality 75
    scores ~30-35 dB against its original). What differs: draft decoding's DCT-domain downscale
    (stopped at 2x the target, as PIL's thumbnail does: measured 33-43 dB here) and, for
    re-encoded shards, a q95 JPEG pass and the edge rows, which blend with replicated edges
    instead of the pad colour (32-43 dB)."""
    array = load_sample_image(photo)  # real 640x427 photographs that ship with scikit-learn
    image = Image.fromarray(array)
    image = image.resize((image.width * upscale, image.height * upscale), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    source = buf.getvalue()
    processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size=side)
    fill = mean_colour(processor)

    def pixels(img: Image.Image) -> torch.Tensor:
        return processor([pad_to_square(img, fill)], return_tensors="pt")["pixel_values"][0]

    full = pixels(decode_rgb(source))
    drafted = decode_rgb(source, min_side=side)
    assert max(drafted.size) < max(image.size)  # draft mode did decode at a reduced scale
    assert _psnr(pixels(drafted), full, processor) >= 30
    stored, _, size = shrink_encoded(source, side)
    assert max(size) == side
    assert _psnr(pixels(decode_rgb(stored, min_side=side)), full, processor) >= 30


def test_a_corrupt_large_jpeg_is_a_counted_skip_on_the_draft_path(tiny_variant):
    encoder = SampleEncoder(
        tiny_variant.processor,
        EncodeOptions("chat", tiny_variant.num_image_tokens, 512, "skip", True),
    )
    assert encoder._min_side == 32  # the draft path is on for a 32 px tower
    cut = _encoded((1024, 768), "JPEG")[:2000]
    out = encoder.finish(Tokenized("x", [1, 2], [-100, 2], [cut]))
    assert isinstance(out, Skip) and out.reason == "corrupt_image"


def test_auto_side_of_a_onevision_run_is_its_largest_grid():
    """arch=llava_onevision tiles an image onto grids of up to grid_tiles crops per side: shards
    for it keep that much (not the single tower view's side, which would lose detail)."""
    from llava_ablate.config import ArchCfg

    tower = VisionCfg(name="t", arch="siglip", config={"image_size": 48, "patch_size": 8},
                      image_aspect="resize")  # fmt: skip
    ov = ArchCfg(name="ov", type="llava_onevision", grid_tiles=3)
    assert shard_image_side(tower, "auto") == 96
    assert shard_image_side(tower, "auto", ov) == 144  # 3 crops of 48 px per side
    assert shard_image_side(tower, 1152, ov) == 1152


def test_the_loader_turns_the_tokenizers_thread_pool_off_unless_told(tiny_variant, monkeypatch):
    options = EncodeOptions("chat", tiny_variant.num_image_tokens, 512, "skip", True)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    SampleEncoder(tiny_variant.processor, options)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the user's choice stands
    SampleEncoder(tiny_variant.processor, options)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
