"""Quotas: the sliding-window store, the worker that runs it, and a call's budget."""
