"""Comparison reports from runs' local results: collect -> compare -> HTML / W&B Report."""
