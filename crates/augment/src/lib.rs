//! Mixing ops of MultiMix, dense MultiMix and the mixup baselines, with their targets and losses.
