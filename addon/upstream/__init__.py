"""llmgate's own upstream exchange: the dispatcher, and what its faults mean."""
