//! COCO box AP against pycocotools 2.0.11 (fixtures from `tools/make_det_fixtures.py`).

use multimix_eval::detection::{coco_ap, parse_results, GroundTruth};
use serde_json::Value;

fn cases() -> Vec<Value> {
    serde_json::from_str(include_str!("fixtures/coco_ap.json")).expect("valid fixture JSON")
}

#[test]
fn ap_equals_pycocotools() {
    let cases = cases();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let gt = GroundTruth::from_json(&case["gt"].to_string()).unwrap();
        let dets = parse_results(&case["dt"].to_string()).unwrap();
        let ap = coco_ap(&gt, &dets).unwrap();
        for (key, got) in [("ap", ap.ap), ("ap50", ap.ap50), ("ap75", ap.ap75)] {
            let want = case[key].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{name} {key}: {got} vs pycocotools {want}"
            );
        }
    }
}

#[test]
fn fixtures_cover_crowds_ties_and_images_without_detections() {
    let cases = cases();
    let crowds = cases
        .iter()
        .flat_map(|c| c["gt"]["annotations"].as_array().unwrap());
    assert!(crowds.filter(|a| a["iscrowd"] == 1).count() > 0);
    let mut images_without_detections = 0;
    for c in &cases {
        let dets = c["dt"].as_array().unwrap();
        let mut scores: Vec<String> = dets.iter().map(|d| d["score"].to_string()).collect();
        let n = scores.len();
        scores.sort();
        scores.dedup();
        assert!(scores.len() < n, "{} has no tied scores", c["name"]);
        let images = c["gt"]["images"].as_array().unwrap();
        images_without_detections += images
            .iter()
            .filter(|i| !dets.iter().any(|d| d["image_id"] == i["id"]))
            .count();
    }
    assert!(images_without_detections > 0);
}

#[test]
fn bad_files_are_refused_with_the_problem() {
    let e = GroundTruth::from_json("{\"images\": []}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ground-truth") && e.contains("annotations"),
        "{e}"
    );
    let e = parse_results("[{\"image_id\": 1}]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("results"), "{e}");
    let e = parse_results(
        "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, -1, 2], \"score\": 0.5}]",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("detection 0") && e.contains("width"), "{e}");
    let gt = r#"{"images": [{"id": 1}], "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}"#;
    let e = GroundTruth::from_json(gt).unwrap_err().to_string();
    assert!(e.contains("image 2"), "{e}");
}
