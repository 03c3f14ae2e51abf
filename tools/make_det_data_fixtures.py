#!/usr/bin/env python3
"""Small real detection files for the COCO and Pascal VOC readers of `crates/data`.

Writes, under `crates/data/tests/fixtures/det/`, with Pillow 13 (PNG, JPEG quality 95):
  * `coco/annotations.json` + `coco/images/{a.png,b.jpg}`: two images (20x16 gray PNG, 24x24
    RGB JPEG), three boxes of two categories (ids 7 and 3), one crowd box;
  * `voc/Annotations/{000001,000002}.xml` + `voc/JPEGImages/{000001,000002}.jpg`: VOC 2012
    layout (1-based inclusive pixel boxes), one `difficult` object, an entity in a name.
Each box is a white rectangle on black, so the readers' boxes can be checked on the pixels.
Re-run from the repository root with `/work/pyref/bin/python tools/make_det_data_fixtures.py`.
"""

import json
from pathlib import Path

from PIL import Image, ImageDraw

root = Path("crates/data/tests/fixtures/det")
(root / "coco/images").mkdir(parents=True, exist_ok=True)
(root / "voc/Annotations").mkdir(parents=True, exist_ok=True)
(root / "voc/JPEGImages").mkdir(parents=True, exist_ok=True)


def canvas(mode, w, h, boxes):
    img = Image.new(mode, (w, h))
    d = ImageDraw.Draw(img)
    for x, y, bw, bh in boxes:
        d.rectangle([x, y, x + bw - 1, y + bh - 1], fill="white")
    return img


a_boxes = [(2, 3, 6, 5), (10, 8, 8, 6)]
b_boxes = [(4, 4, 12, 10), (0, 18, 6, 6)]
canvas("L", 20, 16, a_boxes).save(root / "coco/images/a.png")
canvas("RGB", 24, 24, b_boxes).save(root / "coco/images/b.jpg", quality=95)
coco = {
    "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 16},
               {"id": 2, "file_name": "b.jpg", "width": 24, "height": 24}],
    "categories": [{"id": 7, "name": "shirt"}, {"id": 3, "name": "bag"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": list(a_boxes[0]), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": list(a_boxes[1]), "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": list(b_boxes[0]), "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": list(b_boxes[1]), "iscrowd": 1},
    ],
}
(root / "coco/annotations.json").write_text(json.dumps(coco, indent=1) + "\n")

voc = {"000001": (32, 24, [("dog", 0, (3, 2, 10, 8)), ("cat &amp; co", 0, (16, 10, 12, 12))]),
       "000002": (16, 16, [("dog", 1, (1, 1, 5, 5)), ("dog", 0, (8, 8, 8, 8))])}
for name, (w, h, objects) in voc.items():
    canvas("RGB", w, h, [o[2] for o in objects]).save(root / f"voc/JPEGImages/{name}.jpg",
                                                      quality=95)
    objs = "".join(
        f"\n  <object>\n    <name>{n}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n    <difficult>{d}</difficult>\n    <bndbox>\n"
        f"      <xmin>{x + 1}</xmin>\n      <ymin>{y + 1}</ymin>\n"
        f"      <xmax>{x + bw}</xmax>\n      <ymax>{y + bh}</ymax>\n    </bndbox>\n  </object>"
        for n, d, (x, y, bw, bh) in objects)
    xml = (f"<annotation>\n  <folder>VOC2012</folder>\n  <filename>{name}.jpg</filename>\n"
           f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n    <depth>3</depth>\n"
           f"  </size>\n  <segmented>0</segmented>{objs}\n</annotation>\n")
    (root / f"voc/Annotations/{name}.xml").write_text(xml)
print("wrote", root)
