"""Slurm/submitit plumbing for grids of variants: the task each job runs, the grid planner and
its estimates (steps, tokens, memory, GPU-hours), and submission through Hydra's launcher."""
