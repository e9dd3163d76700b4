"""Benchmarks that write figures to results/ (not tests: they take minutes and measure speed)."""
