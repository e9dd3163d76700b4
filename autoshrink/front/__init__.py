"""The Pareto front of a run: a table (csv/json) and a plot; the maths is search/pareto.py."""
