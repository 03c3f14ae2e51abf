#!/usr/bin/env python3
"""Reference fixtures for the CenterNet pieces of `crates/recipes/src/detection.rs`.

Writes `crates/recipes/tests/fixtures/centernet.json` from PyTorch 2.15 and torchvision 0.29
(CPU, float64). Re-run from the repository root with

    /work/pyref/bin/python tools/make_centernet_fixtures.py

* focal: the penalty-reduced focal loss of "Objects as Points" eq. (1) (alpha 2, beta 4, summed,
  divided by the number of targets equal to 1) on sigmoid(logits), and its gradient with respect
  to the logits by torch.autograd;
* nms: `torchvision.ops.batched_nms(boxes_xyxy, scores, classes, 0.5)` (kept indices in
  decreasing score order);
* peaks: `F.max_pool2d(heat, 3, stride=1, padding=1) == heat` on a [1, C, h, w] map (some
  plateaus of equal values);
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

torch.manual_seed(0)
out = {}

# focal loss
logits = (torch.randn(2, 6, 3, dtype=torch.float64) * 3).requires_grad_(True)
target = torch.rand(2, 6, 3, dtype=torch.float64) * 0.9
target[0, 1, 2] = 1.0
target[1, 4, 0] = 1.0
target[1, 5, 1] = 1.0
p = torch.sigmoid(logits)
pos = target.eq(1).double()
loss = -((torch.log(p) * (1 - p) ** 2 * pos).sum()
         + (torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos)).sum()) / pos.sum()
loss.backward()
out["focal"] = {"logits": logits.detach().flatten().tolist(), "target": target.flatten().tolist(),
                "shape": [2, 6, 3], "loss": loss.item(), "grad": logits.grad.flatten().tolist()}

# class-wise NMS
n = 40
xy = torch.rand(n, 2, dtype=torch.float64) * 40
wh = torch.rand(n, 2, dtype=torch.float64) * 20 + 4
scores = torch.randperm(n).double() / n + 0.01
classes = torch.randint(0, 3, (n,))
keep = torchvision.ops.batched_nms(torch.cat([xy, xy + wh], 1), scores, classes, 0.5)
out["nms"] = {"boxes": torch.cat([xy, wh], 1).tolist(), "scores": scores.tolist(),
              "classes": classes.tolist(), "threshold": 0.5, "keep": keep.tolist()}

# 3x3 peaks
heat = torch.rand(1, 2, 5, 6, dtype=torch.float64).round(decimals=1)
keep = F.max_pool2d(heat, 3, stride=1, padding=1) == heat
peaks = [[int(c), int(y), int(x)] for c, y, x in keep[0].nonzero().tolist()]
# stored as [h, w, C] row-major, the layout of the head's [r, classes] maps
out["peaks"] = {"heat": heat[0].permute(1, 2, 0).flatten().tolist(), "shape": [5, 6, 2],
                "peaks": peaks}

path = Path("crates/recipes/tests/fixtures/centernet.json")
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path} ({path.stat().st_size} bytes)")
