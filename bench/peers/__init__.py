"""The peer trainers' sides of bench/train_throughput.py: scripts run in the peers' own venvs."""
