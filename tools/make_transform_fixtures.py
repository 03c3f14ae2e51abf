"""Reference fixtures for `multimix_data::transform` (resize and channel conversion).

Re-run from the repository root (no randomness):

    /work/pyref/bin/python tools/make_transform_fixtures.py

Reads the committed foolbox CIFAR test images in crates/data/tests/fixtures/foolbox/ and writes
crates/data/tests/fixtures/transforms.json: for each case the input file, which of its channels
to take as a gray image (or null for RGB), an optional crop, the operation, and the expected `C x H x W` u8 output
made by torchvision's `transforms.Resize((h, w))` (bilinear, antialias=True: it calls PIL's
`Image.resize(..., BILINEAR)` on PIL images) and PIL's `convert("L")` / `convert("RGB")`; for
resizes also `output_width_first`, PIL's width pass then its height pass, where it differs;
and `decoded`: two checksums of PIL's decoding of every fixture PNG.
"""

import json
from pathlib import Path

import numpy as np
import PIL
import torchvision
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/data/tests/fixtures"

# (input, gray channel or None, op, size); the crop (top, left, h, w) is applied after
# taking the channel
CASES = [
    ("cifar10_00_3.png", None, "resize", (24, 24)),
    ("cifar10_00_3.png", None, "resize", (40, 40)),
    ("cifar10_01_8.png", None, "resize", (17, 45)),
    ("cifar100_00_49.png", None, "resize", (7, 32)),
    ("cifar100_01_33.png", None, "resize", (64, 13)),
    ("cifar10_02_8.png", 0, "resize", (28, 28)),
    ("cifar10_03_0.png", 1, "resize", (48, 36)),
    ("cifar10_04_6.png", None, "gray", None),
    ("cifar10_05_6.png", 2, "rgb", None),
    # the conform path: gray 28x28 -> RGB 32x32 (convert, then resize)
    ("cifar10_06_1.png", 0, "rgb_then_resize", (32, 32), (2, 2, 28, 28)),
]


def load(name, channel, crop):
    img = Image.open(FIX / "foolbox" / name).convert("RGB")
    if channel is not None:
        img = Image.fromarray(np.asarray(img)[:, :, channel].copy(), mode="L")
    if crop:
        top, left, h, w = crop
        img = img.crop((left, top, left + w, top + h))
    return img


def chw(img):
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    return a.astype(np.uint8)


def main():
    out = []
    for name, channel, op, size, *crop in CASES:
        crop = crop[0] if crop else None
        img = load(name, channel, crop)
        if op == "resize":
            res = transforms.Resize(size)(img)
        elif op == "gray":
            res = img.convert("L")
        elif op == "rgb":
            res = img.convert("RGB")
        else:
            res = transforms.Resize(size)(img.convert("RGB"))
        a = chw(res)
        # PIL's two passes made explicit (width, then height: one pass each), the order of every
        # Pillow before 13; Pillow 13 runs the height pass first when the height shrinks much
        # more than the width, which can move a pixel by one level.
        passes = None
        if op in ("resize", "rgb_then_resize"):
            src = img if op == "resize" else img.convert("RGB")
            h, w = size
            passes = chw(src.resize((w, src.height), Image.BILINEAR).resize((w, h), Image.BILINEAR))
        out.append(
            {
                "input": name,
                "channel": channel,
                "crop": list(crop) if crop else None,
                "op": op,
                "input_shape": list(chw(img).shape),
                "size": list(size) if size else None,
                "shape": list(a.shape),
                "output": a.reshape(-1).tolist(),
                # stored only where it differs from `output`
                "output_width_first": (
                    None if passes is None or (passes == a).all() else passes.reshape(-1).tolist()
                ),
            }
        )
    # PIL's decoding of every fixture PNG, as C x H x W: the pixel sum and the index-weighted
    # sum (which catches a wrong layout or channel order).
    decoded = {}
    for png in sorted((FIX / "foolbox").glob("*.png")):
        a = chw(Image.open(png).convert("RGB")).reshape(-1).astype(np.int64)
        decoded[png.name] = [int(a.sum()), int((a * np.arange(a.size)).sum())]
    doc = {
        "generator": "tools/make_transform_fixtures.py",
        "decoded": decoded,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "cases": out,
    }
    path = FIX / "transforms.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(out)} cases)")


if __name__ == "__main__":
    main()
