//! Data sets, transforms and deterministic batch loading for multimix.
