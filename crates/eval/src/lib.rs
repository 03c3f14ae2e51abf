//! Robustness, OOD detection, calibration and embedding geometry for multimix.
