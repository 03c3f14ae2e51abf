//! Checkpoint format, Hugging Face hub download and upload, and the multimix model zoo.
