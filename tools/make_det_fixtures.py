#!/usr/bin/env python3
"""Reference fixtures for `multimix-eval`'s COCO box AP (`crates/eval/src/detection.rs`).

Writes `crates/eval/tests/fixtures/coco_ap.json` from pycocotools 2.0.11 (`COCOeval`, iouType
"bbox", default parameters: iouThrs 0.5:0.05:0.95, 101 recall thresholds, maxDets 100, area
"all"). Re-run from the repository root with

    /work/pyref/bin/python tools/make_det_fixtures.py

Each case is a small random COCO ground-truth file and results list (fixed numpy seeds): several
categories, ties in scores (scores rounded to one decimal), images without detections, categories
without ground truth (their AP is -1 and excluded from the mean), detections perturbed from the
ground truth so that IoUs spread over all thresholds, and, in some cases, crowd annotations.
Stored per case: `gt`, `dt` and pycocotools' `stats[0]`, `stats[1]`, `stats[2]` (AP, AP50, AP75).
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def make_case(seed, n_images, n_cats, crowd, max_dets_per_image, extra_cat):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 64, "height": 64} for i in range(n_images)]
    cats = [{"id": c + 1, "name": f"c{c + 1}"} for c in range(n_cats)]
    anns, dts = [], []
    for img in images:
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(4, 30, size=2)
            x, y = rng.uniform(0, 64 - w), rng.uniform(0, 64 - h)
            is_crowd = int(crowd and rng.random() < 0.15)
            box = [round(float(v), 2) for v in (x, y, w, h)]
            anns.append({
                "id": len(anns) + 1, "image_id": img["id"],
                "category_id": int(rng.integers(1, n_cats + 1)), "bbox": box,
                "area": round(box[2] * box[3], 4), "iscrowd": is_crowd,
            })
    for img in images:
        if rng.random() < 0.2:
            continue  # an image without detections
        own = [a for a in anns if a["image_id"] == img["id"]]
        for _ in range(rng.integers(0, max_dets_per_image + 1)):
            if own and rng.random() < 0.7:
                a = own[rng.integers(len(own))]
                x, y, w, h = a["bbox"]
                s = rng.uniform(0, 0.4)
                x, y = x + rng.normal(0, s * w / 2), y + rng.normal(0, s * h / 2)
                w, h = w * np.exp(rng.normal(0, s)), h * np.exp(rng.normal(0, s))
                cat = a["category_id"] if rng.random() < 0.85 else int(rng.integers(1, n_cats + 1))
            else:
                w, h = rng.uniform(4, 30, size=2)
                x, y = rng.uniform(0, 64 - w), rng.uniform(0, 64 - h)
                cat = int(rng.integers(1, n_cats + 1 + extra_cat))
            dts.append({
                "image_id": img["id"], "category_id": cat,
                "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                "score": round(float(rng.random()), 1),  # ties
            })
    if extra_cat:
        cats.append({"id": n_cats + 1, "name": "no-ground-truth"})
    return {"images": images, "annotations": anns, "categories": cats}, dts


def evaluate(gt, dts):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        res = coco.loadRes(json.loads(json.dumps(dts)))
        ev = COCOeval(coco, res, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:3]]


def main():
    cases = []
    configs = [
        # seed, images, categories, crowd, max detections per image, category without gt
        (0, 4, 1, False, 4, 0),
        (1, 8, 3, False, 6, 1),
        (2, 12, 4, True, 8, 0),
        (3, 6, 2, True, 5, 1),
        (4, 20, 5, False, 10, 1),
        (5, 10, 3, True, 30, 0),
    ]
    for seed, n_images, n_cats, crowd, per_image, extra in configs:
        gt, dts = make_case(seed, n_images, n_cats, crowd, per_image, extra)
        ap, ap50, ap75 = evaluate(gt, dts)
        cases.append({"name": f"seed{seed}", "gt": gt, "dt": dts,
                      "ap": ap, "ap50": ap50, "ap75": ap75})
        print(f"seed{seed}: {len(gt['annotations'])} gt, {len(dts)} dt, "
              f"AP {ap:.4f} AP50 {ap50:.4f} AP75 {ap75:.4f}")
    out = Path("crates/eval/tests/fixtures/coco_ap.json")
    out.write_text(json.dumps(cases, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
