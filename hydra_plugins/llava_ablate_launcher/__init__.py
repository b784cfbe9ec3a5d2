"""Hydra launcher plugins of llava-ablate (Hydra finds plugins only under `hydra_plugins`)."""
