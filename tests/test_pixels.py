"""The fused pixel path (data/pixels.py): bitwise equal to the image processor's own pad-to-square
path for every image geometry, the processor's path kept where it cannot be reproduced."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

from llava_ablate.data.encode import EncodeOptions, SampleEncoder, Tokenized
from llava_ablate.data.images import mean_colour, pad_to_square
from llava_ablate.data.pixels import SquarePixels

PROCESSORS = {
    "clip_336": lambda: CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=336),
    "clip_32": lambda: CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32),
    "siglip_384": lambda: SiglipImageProcessorPil(size={"height": 384, "width": 384}),
}


def _images(sizes, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_fused_pixels_equal_the_processor_bitwise(name):
    processor = PROCESSORS[name]()
    fill = mean_colour(processor)
    fused = SquarePixels.for_processor(processor, fill)
    assert fused is not None
    s = fused.side
    # at the tower's size (margins filled, no resize), wide / tall / square / odd margins,
    # larger (padded then resized, as unshrunk shards are) and smaller (upscaled)
    sizes = [(s, s), (s, s * 3 // 4), (s * 3 // 4, s), (s - 1, s), (s, 5), (640, 480),
             (480, 640), (s + 1, s + 1), (s // 2, s // 3)]  # fmt: skip
    for k, size in enumerate(sizes):
        images = _images([size, size[::-1]], seed=k)
        ref = processor([pad_to_square(i, fill) for i in images], return_tensors="pt")
        assert torch.equal(fused(images), ref["pixel_values"]), size


def test_settings_the_table_does_not_reproduce_keep_the_processor():
    fill = (0, 0, 0)
    for processor in (
        CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=224),  # a real crop
        CLIPImageProcessorPil(size={"shortest_edge": 336}, do_resize=False),
        SiglipImageProcessorPil(size={"height": 384, "width": 256}),  # not square
        None,  # a processor of another kind
    ):
        assert SquarePixels.for_processor(processor, fill) is None


def test_the_encoder_uses_the_fused_path_with_the_processors_values(tiny_variant):
    options = EncodeOptions("chat", tiny_variant.num_image_tokens, 512, "skip", True)
    fused = SampleEncoder(tiny_variant.processor, options)
    plain = SampleEncoder(
        tiny_variant.processor,
        EncodeOptions("chat", tiny_variant.num_image_tokens, 512, "skip", True, fused_pixels=False),
    )
    assert fused._square is not None and plain._square is None
    data = []
    for image in _images([(48, 36), (20, 32)]):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        data.append(buf.getvalue())
    tok = Tokenized("x", [1, 2], [-100, 2], data)
    assert torch.equal(fused.finish(tok)["pixel_values"], plain.finish(tok)["pixel_values"])


def test_a_micro_batch_shares_one_pixel_buffer_and_collates_without_a_copy(tiny_variant):
    from llava_ablate.data.encode import Collator, Skip

    options = EncodeOptions("chat", tiny_variant.num_image_tokens, 512, "skip", True)
    encoder = SampleEncoder(tiny_variant.processor, options)
    jpegs = []
    for image in _images([(48, 36), (20, 32), (32, 32), (40, 30)]):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    corrupt = jpegs[1][:40]
    toks = [
        Tokenized("a", [1, 2], [-100, 2], [jpegs[0]]),
        Skip("s", "too_long"),
        Tokenized("bad", [1, 2], [-100, 2], [corrupt]),  # a counted skip, takes no slot
        Tokenized("b", [1, 2, 3], [-100, 2, 3], [jpegs[2], jpegs[3]]),
    ]
    done = encoder.finish_all(toks)
    assert [type(x).__name__ for x in done] == ["dict", "Skip", "Skip", "dict"]
    assert done[2].reason == "corrupt_image"
    collate = Collator(tiny_variant.tokenizer.pad_token_id)
    batch = collate(done)
    # the same values as each sample finished alone and stacked by copy
    alone = torch.cat([encoder.finish(t)["pixel_values"] for t in (toks[0], toks[3])])
    assert torch.equal(batch["pixel_values"], alone)
    # and no copy: the batch's pixel values are the buffer the samples were written into
    assert batch["pixel_values"].data_ptr() == done[0]["pixel_values"].data_ptr()
    # a batch whose views are not consecutive in one buffer is stacked by copy, same values
    reordered = collate([done[3], done[0]])
    assert torch.equal(reordered["pixel_values"], torch.cat([alone[1:], alone[:1]]))
    assert reordered["pixel_values"].data_ptr() != done[0]["pixel_values"].data_ptr()
