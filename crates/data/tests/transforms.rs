//! Resize and channel conversion against torchvision's `Resize` and PIL: exact, except where
//! Pillow 13 changed its pass order (then exact against PIL's two passes, and within 1 level)
//! (`tools/make_transform_fixtures.py` wrote `tests/fixtures/transforms.json`).

use multimix_data::transform::{gray_to_rgb, resize_bilinear, rgb_to_gray};
use serde_json::Value;
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// The case's input as `C × H × W`: the PNG, one channel of it if asked, cropped if asked.
fn input(case: &Value) -> (Vec<u8>, (usize, usize, usize)) {
    let path = Path::new(FIXTURES)
        .join("foolbox")
        .join(case["input"].as_str().unwrap());
    let rgb = image::open(&path).unwrap().to_rgb8();
    let (h, w) = (rgb.height() as usize, rgb.width() as usize);
    let raw = rgb.into_raw();
    let channels: Vec<usize> = match case["channel"].as_u64() {
        Some(c) => vec![c as usize],
        None => vec![0, 1, 2],
    };
    let (top, left, ch, cw) = match case["crop"].as_array() {
        Some(_) => {
            let c = dims(&case["crop"]);
            (c[0], c[1], c[2], c[3])
        }
        None => (0, 0, h, w),
    };
    let mut out = Vec::new();
    for &c in &channels {
        for y in top..top + ch {
            for x in left..left + cw {
                out.push(raw[(y * w + x) * 3 + c]);
            }
        }
    }
    (out, (channels.len(), ch, cw))
}

#[test]
fn transforms_match_torchvision_and_pil_exactly() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("transforms.json")).unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let (img, shape) = input(case);
        assert_eq!(dims(&case["input_shape"]), vec![shape.0, shape.1, shape.2]);
        let expected: Vec<u8> = dims(&case["output"]).into_iter().map(|v| v as u8).collect();
        let size = || {
            let s = dims(&case["size"]);
            (s[0], s[1])
        };
        let got = match case["op"].as_str().unwrap() {
            "resize" => resize_bilinear(&img, shape, size()),
            "gray" => rgb_to_gray(&img),
            "rgb" => gray_to_rgb(&img),
            "rgb_then_resize" => resize_bilinear(&gray_to_rgb(&img), (3, shape.1, shape.2), size()),
            op => panic!("unknown op {op}"),
        };
        assert_eq!(got.len(), expected.len(), "{case:?}");
        let what = format!("{} {} {:?}", case["input"], case["op"], case["size"]);
        match case["output_width_first"].as_array() {
            // PIL's integer arithmetic, width pass then height pass, is reproduced exactly ...
            None => assert_eq!(got, expected, "{what}"),
            Some(_) => {
                let passes: Vec<u8> = dims(&case["output_width_first"])
                    .into_iter()
                    .map(|v| v as u8)
                    .collect();
                assert_eq!(got, passes, "{what}");
                // ... and Pillow 13, which ran the height pass first here, is within one level.
                let worst = got.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max();
                assert_eq!(worst, Some(1), "{what}");
            }
        }
    }
}
