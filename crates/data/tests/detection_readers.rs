//! COCO and Pascal VOC readers on the small real files of `tools/make_det_data_fixtures.py`
//! (Pillow-written PNG and JPEG, each box a white rectangle on black), and their errors.

use multimix_data::detection::{read_coco, read_voc, DetectionSet, ImageShape};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/det")
}

/// Mean pixel of the first channel inside and outside the boxes of image `k`.
fn contrast(set: &DetectionSet, k: usize) -> (f32, f32) {
    let n = set.width;
    let img = &set.images[k * set.image_len()..][..n * n];
    let (mut inside, mut outside) = ((0f32, 0), (0f32, 0));
    for v in 0..n {
        for u in 0..n {
            let (cu, cv) = (u as f32 + 0.5, v as f32 + 0.5);
            let hit = set.boxes[k].iter().any(|b| {
                let [x, y, w, h] = b.bbox;
                cu > x + 1.0 && cu < x + w - 1.0 && cv > y + 1.0 && cv < y + h - 1.0
            });
            let miss = set.boxes[k].iter().all(|b| {
                let [x, y, w, h] = b.bbox;
                cu < x - 1.0 || cu > x + w + 1.0 || cv < y - 1.0 || cv > y + h + 1.0
            });
            let p = img[v * n + u] as f32;
            if hit {
                inside = (inside.0 + p, inside.1 + 1);
            } else if miss {
                outside = (outside.0 + p, outside.1 + 1);
            }
        }
    }
    (
        inside.0 / inside.1.max(1) as f32,
        outside.0 / outside.1.max(1) as f32,
    )
}

#[test]
fn coco_boxes_scale_with_the_images_and_skip_crowds() {
    let root = fixtures().join("coco");
    let shape = ImageShape {
        size: 32,
        channels: 1,
    };
    let set = read_coco(&root.join("annotations.json"), &root.join("images"), shape).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.class_names, vec!["bag", "shirt"]); // ids 3, 7
    assert_eq!(set.boxes[0].len(), 2);
    assert_eq!(set.boxes[1].len(), 1, "the crowd box is left out");
    // a.png is 20x16: x scales by 32/20, y by 32/16.
    assert_eq!(set.boxes[0][0].class, 1);
    assert_eq!(set.boxes[0][0].bbox, [3.2, 6.0, 9.6, 10.0]);
    assert_eq!(set.boxes[0][1].class, 0);
    for k in 0..2 {
        let (inside, outside) = contrast(&set, k);
        assert!(
            inside > 200.0 && outside < 30.0,
            "image {k}: {inside} vs {outside}"
        );
    }
    let rgb = read_coco(
        &root.join("annotations.json"),
        &root.join("images"),
        ImageShape {
            size: 32,
            channels: 3,
        },
    )
    .unwrap();
    assert_eq!(rgb.image_len(), 3 * 32 * 32);
}

#[test]
fn voc_boxes_are_zero_based_and_skip_difficult_objects() {
    let shape = ImageShape {
        size: 16,
        channels: 3,
    };
    let set = read_voc(&fixtures().join("voc"), shape).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.class_names, vec!["cat & co", "dog"]);
    // 000001.jpg is 32x24: dog at (3, 2) of 10x8 pixels; scaled by 0.5 and 2/3.
    let dog = set.boxes[0][0];
    assert_eq!(dog.class, 1);
    let want = [1.5, 2.0 * 2.0 / 3.0, 5.0, 8.0 * 2.0 / 3.0];
    for (a, b) in dog.bbox.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{:?} vs {want:?}", dog.bbox);
    }
    assert_eq!(set.boxes[1].len(), 1, "the difficult dog is left out");
    assert_eq!(set.boxes[1][0].bbox, [8.0, 8.0, 8.0, 8.0]);
    // Image 0 has no difficult object: every white pixel is in a box.
    let (inside, outside) = contrast(&set, 0);
    assert!(inside > 200.0 && outside < 30.0, "{inside} vs {outside}");
}

#[test]
fn bad_files_name_the_file_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("multimix-det-readers-{}", std::process::id()));
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let ann = dir.join("annotations.json");
    std::fs::write(
        &ann,
        r#"{"images": [{"id": 1, "file_name": "x.png"}], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    let shape = ImageShape {
        size: 8,
        channels: 1,
    };
    let e = read_coco(&ann, &images, shape).unwrap_err().to_string();
    assert!(e.contains("x.png"), "{e}");
    std::fs::write(images.join("x.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let e = read_coco(&ann, &images, shape).unwrap_err().to_string();
    assert!(e.contains("x.png") && e.contains("PNG or JPEG"), "{e}");
    std::fs::write(&ann, "{\"images\": 3}").unwrap();
    let e = read_coco(&ann, &images, shape).unwrap_err().to_string();
    assert!(e.contains("annotations.json") && e.contains("COCO"), "{e}");

    let voc = dir.join("voc");
    std::fs::create_dir_all(voc.join("Annotations")).unwrap();
    let e = read_voc(&voc, shape).unwrap_err().to_string();
    assert!(e.contains("no .xml"), "{e}");
    let xml = voc.join("Annotations/1.xml");
    std::fs::write(&xml, "<annotation><filename>1.jpg</filename><object><name>a</name><bndbox><xmin>1</xmin><ymin>x</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>").unwrap();
    let e = read_voc(&voc, shape).unwrap_err().to_string();
    assert!(e.contains("1.xml") && e.contains("<ymin>"), "{e}");
    std::fs::write(&xml, "<html></html>").unwrap();
    let e = read_voc(&voc, shape).unwrap_err().to_string();
    assert!(e.contains("1.xml") && e.contains("<annotation>"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
