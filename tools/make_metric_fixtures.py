#!/usr/bin/env python3
"""Reference fixtures for `multimix-eval`'s OOD-detection and calibration metrics.

Writes `crates/eval/tests/fixtures/ood_metrics.json` and
`crates/eval/tests/fixtures/calibration.json` from scikit-learn 1.9.1, torchmetrics 1.9.0 and
PyTorch 2.15 (CPU). Re-run from the repository root with

    /work/pyref/bin/python tools/make_metric_fixtures.py

The output is deterministic (fixed numpy seeds); commit the JSON files it writes.

OOD metrics (ID = positive, score = "higher is more in-distribution"):
  * `roc_in`   = sklearn.metrics.roc_curve(is_id, score)          (default arguments)
  * `roc_out`  = sklearn.metrics.roc_curve(is_ood, -score)
  * auroc      = sklearn.metrics.roc_auc_score(is_id, score)
  * aupr_in    = sklearn.metrics.average_precision_score(is_id, score)
  * aupr_out   = sklearn.metrics.average_precision_score(is_ood, -score)
  * fpr95      = fpr[argmax(tpr >= 0.95)] on roc_in    (ODIN / Hendrycks convention)
  * fpr95_ood_positive = same on roc_out                (OpenOOD v1.5 / pytorch-ood convention)
  * detection_error = min(0.5 * (1 - tpr) + 0.5 * fpr) on roc_in

Calibration (rows of probabilities, f32):
  * ece / mce: torchmetrics' own `_ce_compute` (norm "l1" / "max") run in float64 on the float32
    confidences and correctness that `_multiclass_calibration_error_update` produces, with the
    float32 `torch.linspace(0, 1, n_bins + 1)` boundaries that `MulticlassCalibrationError` uses
    (upcast), so the binning is torchmetrics' and the arithmetic is exact to ~1e-15;
  * ece_f32 / mce_f32: the public `MulticlassCalibrationError` (float32 arithmetic);
  * bins: `_binning_bucketize` in float64 (accuracy, confidence, count per bucket);
  * nll: `F.nll_loss(log(clamp(p, FLOOR)))` in float64 for probabilities (FLOOR = smallest
    normal f32), `F.cross_entropy(logits.double())` for logits;
  * brier: `sklearn.metrics.brier_score_loss(y, p, labels=range(C), scale_by_half=False)`;
  * accuracy: `torch.argmax(p, dim=1) == y` (first index on ties).
For logits cases the probabilities are `softmax(logits.double()).float()`.
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
import torchmetrics
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification.calibration_error import (
    _binning_bucketize,
    _ce_compute,
    _multiclass_calibration_error_update,
)

OUT = Path(__file__).resolve().parent.parent / "crates" / "eval" / "tests" / "fixtures"
F32_MIN_POSITIVE = float(np.finfo(np.float32).tiny)


def floats(a):
    """JSON-safe list of the exact values of an array (f32 values are exact in f64)."""
    return [float(x) for x in np.asarray(a, dtype=np.float64).ravel()]


def curve(fpr, tpr, thr):
    return {"fpr": floats(fpr), "tpr": floats(tpr), "thresholds": [float(t) if np.isfinite(t) else "inf" for t in thr]}


def ood_case(name, scores_in, scores_out):
    s_in = np.asarray(scores_in, dtype=np.float32)
    s_out = np.asarray(scores_out, dtype=np.float32)
    score = np.concatenate([s_in, s_out])
    is_id = np.concatenate([np.ones(len(s_in), dtype=int), np.zeros(len(s_out), dtype=int)])
    is_ood = 1 - is_id
    fpr_i, tpr_i, thr_i = roc_curve(is_id, score)
    fpr_o, tpr_o, thr_o = roc_curve(is_ood, -score)
    return {
        "name": name,
        "scores_in": floats(s_in),
        "scores_out": floats(s_out),
        "roc_in": curve(fpr_i, tpr_i, thr_i),
        "roc_out": curve(fpr_o, tpr_o, thr_o),
        "auroc": float(roc_auc_score(is_id, score)),
        "aupr_in": float(average_precision_score(is_id, score)),
        "aupr_out": float(average_precision_score(is_ood, -score)),
        "fpr95": float(fpr_i[np.argmax(tpr_i >= 0.95)]),
        "fpr95_ood_positive": float(fpr_o[np.argmax(tpr_o >= 0.95)]),
        "detection_error": float(np.min(0.5 * (1.0 - tpr_i) + 0.5 * fpr_i)),
    }


def ood_cases():
    rng = np.random.default_rng(20240611)
    cases = [
        ood_case("normal_shifted", rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 150)),
        ood_case("integers_0_5", rng.integers(0, 6, 50), rng.integers(0, 6, 70)),
        ood_case("integers_shifted", rng.integers(2, 9, 80), rng.integers(0, 5, 60)),
        ood_case(
            "repeated_values",
            rng.choice([0.1, 0.2, 0.3], 40),
            rng.choice([0.2, 0.3, 0.4], 33),
        ),
        ood_case("all_equal", [1.0] * 5, [1.0] * 7),
        ood_case("all_equal_zero_signs", [0.0, -0.0, 0.0], [-0.0, 0.0]),
        ood_case("tiny_1_1_separated", [0.5], [0.3]),
        ood_case("tiny_1_1_inverted", [0.3], [0.5]),
        ood_case("tiny_1_1_tied", [0.3], [0.3]),
        ood_case("tiny_2_1", [1.0, 2.0], [2.0]),
        ood_case("tiny_3_3_ties", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0]),
        ood_case("tiny_1_3", [2.0], [1.0, 2.0, 3.0]),
        ood_case("unbalanced_many_in", rng.normal(0.5, 1.0, 1000), rng.normal(0.0, 1.0, 3)),
        ood_case("unbalanced_many_out", rng.normal(0.5, 1.0, 2), rng.normal(0.0, 1.0, 500)),
        ood_case("perfect", rng.uniform(2, 3, 30), rng.uniform(0, 1, 20)),
        ood_case("inverted", rng.uniform(0, 1, 30), rng.uniform(2, 3, 20)),
        # tpr hits exactly 0.95 (19 of 20 ID samples) at a tied threshold.
        ood_case("tpr_exactly_095", list(range(19, 0, -1)) + [-5.0], [3.0, 3.0, 0.5, -5.0, -6.0]),
    ]
    # MSP-like scores: float32 softmax saturates at exactly 1.0 for confident samples.
    logits_in = rng.normal(0, 1, (300, 10)) * 12.0
    logits_out = rng.normal(0, 1, (200, 10)) * 10.0
    msp_in = torch.softmax(torch.tensor(logits_in, dtype=torch.float32), 1).max(1).values.numpy()
    msp_out = torch.softmax(torch.tensor(logits_out, dtype=torch.float32), 1).max(1).values.numpy()
    assert (msp_in == 1.0).sum() > 10 and (msp_out == 1.0).sum() > 0
    cases.append(ood_case("msp_saturated", msp_in, msp_out))
    # Energy-like large negative scores, rounded to a coarse grid to make cross-set ties.
    cases.append(
        ood_case(
            "energy_coarse",
            np.round(rng.normal(-900.0, 40.0, 120) / 8.0) * 8.0,
            np.round(rng.normal(-950.0, 60.0, 90) / 8.0) * 8.0,
        )
    )
    return cases


def bin_boundaries(n_bins):
    # What MulticlassCalibrationError bins float32 confidences against.
    return torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)


def calib_case(name, n_bins, labels, probs=None, logits=None):
    labels_t = torch.tensor(labels, dtype=torch.long)
    if logits is not None:
        logits_t = torch.tensor(np.asarray(logits, dtype=np.float32))
        probs_t = torch.softmax(logits_t.double(), dim=1).float()
        nll = F.cross_entropy(logits_t.double(), labels_t).item()
    else:
        probs_t = torch.tensor(np.asarray(probs, dtype=np.float32))
        nll = F.nll_loss(torch.log(probs_t.double().clamp_min(F32_MIN_POSITIVE)), labels_t).item()
    n, c = probs_t.shape
    assert torch.all((probs_t >= 0) & (probs_t <= 1))
    conf, acc = _multiclass_calibration_error_update(probs_t, labels_t)
    assert conf.dtype == torch.float32
    # torch.max(dim=1) returns the first maximal index, as torch.argmax does.
    assert torch.equal(probs_t.max(dim=1).indices, probs_t.argmax(dim=1))
    bounds = bin_boundaries(n_bins).double()
    acc_bin, conf_bin, prop_bin = _binning_bucketize(conf.double(), acc.double(), bounds)
    counts = torch.bucketize(conf, bin_boundaries(n_bins), right=True) - 1
    counts = torch.bincount(counts, minlength=n_bins + 1)
    assert torch.allclose(prop_bin, counts.double() / n)
    ece = _ce_compute(conf.double(), acc.double(), bounds, norm="l1").item()
    mce = _ce_compute(conf.double(), acc.double(), bounds, norm="max").item()
    ece_f32 = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="l1")(probs_t, labels_t).item()
    mce_f32 = MulticlassCalibrationError(num_classes=c, n_bins=n_bins, norm="max")(probs_t, labels_t).item()
    brier = brier_score_loss(
        labels_t.numpy(), probs_t.double().numpy(), labels=list(range(c)), scale_by_half=False
    )
    case = {
        "name": name,
        "num_classes": c,
        "n_bins": n_bins,
        "labels": [int(x) for x in labels_t],
        "boundaries": floats(bin_boundaries(n_bins).numpy()),
        "bin_counts": [int(x) for x in counts],
        "bin_accuracy": floats(acc_bin.numpy()),
        "bin_confidence": floats(conf_bin.numpy()),
        "accuracy": float(acc.double().mean()),
        "ece": ece,
        "mce": mce,
        "ece_f32": ece_f32,
        "mce_f32": mce_f32,
        "nll": nll,
        "brier": float(brier),
    }
    if logits is not None:
        case["logits"] = floats(logits_t.numpy())
    else:
        case["probs"] = floats(probs_t.numpy())
    return case


def edge_rows(n_bins):
    """Rows whose max probability sits exactly on, one ulp below and one ulp above the f32 bin
    boundaries, plus exact 1.0 and argmax ties."""
    bounds = bin_boundaries(n_bins).numpy()
    rows, labels = [], []
    one = np.float32(1.0)
    for k, b in enumerate(bounds):
        for v in (b, np.nextafter(b, np.float32(0)), np.nextafter(b, np.float32(2))):
            v = np.float32(v)
            if not (0.5 <= v <= 1.0):
                continue
            rows.append([v, one - v, np.float32(0)])  # 1 - v is exact for v in [0.5, 1]
            labels.append(k % 2)
    for b in bounds:
        if 1 / 3 < b < 0.5:
            rest = np.float32((1.0 - float(b)) / 2.0)
            rows.append([rest, b, rest])
            labels.append(1)
    rows += [[one, 0, 0], [0, one, 0], [one, 0, 0], [0, 0, one], [0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [0.5, 0.5, 0.0]]
    labels += [0, 0, 2, 2, 1, 2, 0]
    return np.asarray(rows, dtype=np.float32), labels


def calibration_cases():
    rng = np.random.default_rng(7)
    cases = []
    for name, n, c, temp, n_bins in [
        ("random_c10_t3_b15", 200, 10, 3.0, 15),
        ("random_c10_t8_b15", 150, 10, 8.0, 15),
        ("random_c5_t1_b10", 120, 5, 1.0, 10),
        ("random_c50_t6_b20", 40, 50, 6.0, 20),
        ("random_c3_t20_b7", 150, 3, 20.0, 7),
    ]:
        logits = rng.normal(0, 1, (n, c)) * temp
        # Labels correlated with the logits so that accuracy is neither 0 nor 1.
        labels = np.where(rng.uniform(size=n) < 0.6, logits.argmax(1), rng.integers(0, c, n))
        cases.append(calib_case(name + "_logits", n_bins, labels, logits=logits))
        probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=1).numpy()
        cases.append(calib_case(name + "_probs", n_bins, labels, probs=probs))
    for n_bins in (15, 10, 7, 1):
        rows, labels = edge_rows(n_bins)
        cases.append(calib_case(f"edges_b{n_bins}", n_bins, labels, probs=rows))
    # A zero probability on the true class exercises the NLL floor.
    cases.append(calib_case("zero_prob_label", 15, [1, 0, 2], probs=[[1, 0, 0], [0.7, 0.3, 0.0], [0.2, 0.8, 0.0]]))
    return cases


def linspace_table():
    """Float32 `torch.linspace(0, 1, n + 1)` for n = 1..64 (what the bins are built from)."""
    return {str(n): floats(bin_boundaries(n).numpy()) for n in range(1, 65)}


def main():
    # brier_score_loss warns that float32 rows upcast to float64 do not sum to 1 within 1.5e-8;
    # the score is still the plain formula on the given values.
    warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": "tools/make_metric_fixtures.py",
        "sklearn": sklearn.__version__,
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
    }
    ood = {"meta": meta, "cases": ood_cases()}
    cal = {
        "meta": meta,
        "nll_prob_floor": F32_MIN_POSITIVE,
        "linspace_f32": linspace_table(),
        "cases": calibration_cases(),
    }
    for fname, payload in (("ood_metrics.json", ood), ("calibration.json", cal)):
        path = OUT / fname
        path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    assert math.isclose(cal["cases"][0]["ece"], cal["cases"][0]["ece_f32"], abs_tol=1e-5)


if __name__ == "__main__":
    main()
