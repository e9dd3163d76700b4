"""Measurements of a model: latency (measured, and the per-site table of latency budgets) and the
metrics of an evaluated model (test perplexity, bytes, ratio, latency, throughput)."""
