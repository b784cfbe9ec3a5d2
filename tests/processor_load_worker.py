"""Load saved processors with torchvision unimportable (installed or not) and check that each
encodes an image + prompt as the processor that was saved did. argv: mode (`ours`: through
llava_ablate; `bare`: only transformers and the directory's copy of the helper, run by the code
an export's model card shows), dirs."""

import sys

sys.modules["torchvision"] = None  # `import torchvision` fails; find_spec says absent

mode, dirs = sys.argv[1], sys.argv[2:]
if mode == "ours":
    from llava_ablate.base.video_processors import allow_video_processors

    allow_video_processors()
else:
    for d in dirs:  # the code the model card shows, verbatim; the first run does the work
        exec(open(f"{d}/card_code.py").read())

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor  # noqa: E402

for d in dirs:
    expected = torch.load(f"{d}/expected.pt")
    processor = AutoProcessor.from_pretrained(d)
    prompt = open(f"{d}/prompt.txt").read()
    got = processor(images=[Image.open(f"{d}/image.png")], text=[prompt], return_tensors="pt")
    assert set(got) == set(expected), (d, set(got), set(expected))
    for key, value in expected.items():
        assert torch.equal(got[key], value), (d, key)
    print("loaded", d, type(processor).__name__, type(processor.image_processor).__name__)
assert ("llava_ablate" in sys.modules) == (mode == "ours"), sorted(sys.modules)[:5]
assert "torchvision" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
