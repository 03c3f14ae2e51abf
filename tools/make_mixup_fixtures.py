"""timm reference fixtures for the input-space mixing of `multimix_augment::mixup`.

Re-run from the repository root (fixed seed, deterministic output):

    /work/pyref/bin/python tools/make_mixup_fixtures.py

Writes crates/augment/tests/fixtures/mixup.safetensors: for each case `<case>.x` (input images
[b, c, h, w]), `<case>.target` (labels, int64), the drawn parameters made fixed (`<case>.lam`
per element before correction, `<case>.cutmix` per element, `<case>.cy`, `<case>.cx` box centers
per element) and timm's outputs `<case>.out_x` and `<case>.out_y` (soft targets), plus
`bbox.*`: `timm.data.mixup.rand_bbox` boxes for given (lam, cy, cx). timm 1.0.31's `Mixup` is
called as users call it; only its random draws (`_params_per_batch`, `_params_per_elem` and
`np.random.randint`) are replaced by fixed values, so every arithmetic step is timm's.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from timm.data import mixup as tm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/augment/tests/fixtures/mixup.safetensors"


class FixedRandint:
    """Replaces np.random.randint: returns the queued values in order."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, low, high=None, size=None):
        v = self.values.pop(0)
        assert low <= v < high, (low, v, high)
        return v


def with_randint(values, fn):
    saved = np.random.randint
    np.random.randint = FixedRandint(values)
    try:
        return fn()
    finally:
        np.random.randint = saved


def case(tensors, name, mixer_kw, mode, lam, cutmix, centers, shape, classes, gen):
    b, c, h, w = shape
    x = torch.rand(shape, generator=gen, dtype=torch.float32)
    target = torch.randint(0, classes, (b,), generator=gen)
    mixer = tm.Mixup(mode=mode, num_classes=classes, **mixer_kw)
    lam = np.asarray(lam, dtype=np.float32)
    cutmix = np.asarray(cutmix, dtype=bool)
    if mode == "batch":
        mixer._params_per_batch = lambda: (float(lam[0]), bool(cutmix[0]))
    else:
        mixer._params_per_elem = lambda n: (lam.copy(), cutmix.copy())
    flat = [v for cy_cx in centers for v in cy_cx]
    out_x, out_y = with_randint(flat, lambda: mixer(x.clone(), target.clone()))
    cy = [p[0] for p in centers] or [0]
    cx = [p[1] for p in centers] or [0]
    tensors.update({
        f"{name}.x": x,
        f"{name}.target": target.to(torch.int64),
        f"{name}.lam": torch.tensor(lam, dtype=torch.float64),
        f"{name}.cutmix": torch.tensor(cutmix.astype(np.uint8)),
        f"{name}.cy": torch.tensor(cy, dtype=torch.int64),
        f"{name}.cx": torch.tensor(cx, dtype=torch.int64),
        f"{name}.smoothing": torch.tensor([mixer_kw.get("label_smoothing", 0.1)], dtype=torch.float64),
        f"{name}.correct_lam": torch.tensor([int(mixer_kw.get("correct_lam", True))], dtype=torch.uint8),
        f"{name}.out_x": out_x.contiguous(),
        f"{name}.out_y": out_y.to(torch.float32).contiguous(),
    })


def main():
    gen = torch.Generator().manual_seed(0)
    t = {}
    both = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    case(t, "batch_mixup", dict(mixup_alpha=1.0, label_smoothing=0.1), "batch",
         [0.3], [False], [], (4, 3, 8, 8), 5, gen)
    case(t, "batch_cutmix", dict(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0), "batch",
         [0.6], [True], [(2, 5)], (6, 2, 9, 7), 4, gen)
    case(t, "batch_cutmix_edge_uncorrected",
         dict(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.2, correct_lam=False), "batch",
         [0.35], [True], [(8, 0)], (4, 1, 9, 9), 3, gen)
    case(t, "elem_switch", both, "elem",
         [0.25, 1.0, 0.7, 0.55, 0.9, 0.4], [True, False, False, True, True, False],
         [(1, 1), (4, 6), (6, 3)], (6, 3, 8, 8), 10, gen)
    case(t, "pair_switch", both, "pair",
         [0.45, 0.8, 1.0], [True, False, True], [(3, 3)], (6, 2, 7, 7), 6, gen)

    # rand_bbox with given centers, clipping at the edges included.
    boxes = []
    for (h, w, lam, cy, cx) in [(8, 8, 0.3, 4, 4), (9, 7, 0.6, 0, 6), (32, 32, 0.05, 31, 2),
                                (28, 28, 0.99, 13, 20), (5, 11, 0.5, 2, 10), (16, 16, 0.0, 8, 8)]:
        yl, yh, xl, xh = with_randint([cy, cx], lambda: tm.rand_bbox((1, 1, h, w), lam))
        boxes.append([h, w, cy, cx, int(yl), int(yh), int(xl), int(xh)])
        t[f"bbox.lam{len(boxes) - 1}"] = torch.tensor([lam], dtype=torch.float64)
    t["bbox.cases"] = torch.tensor(boxes, dtype=torch.int64)
    save_file(t, str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
