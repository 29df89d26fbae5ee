"""llmgate: an LLM egress gateway built as a mitmproxy addon."""
