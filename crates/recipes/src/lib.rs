//! Optimizers, schedules, EMA teacher and training loops for multimix.
