"""The llmgate benchmark; `bench/run.py` is the entry point and documents the design."""
