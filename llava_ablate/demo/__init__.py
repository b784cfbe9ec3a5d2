"""The embedded default: the paper's ablation grid in miniature, end to end on a CPU."""
