"""The Hydra config groups, as the package `llava_ablate.conf` (`llava_ablate/conf` links here).

Hydra reads them through its `pkg://llava_ablate.conf` source (llava_ablate/config.py
CONF_SOURCE), so an installed wheel finds them from any working directory. `data/` links to
`data_recipes/` and `grid/` to `launch/`: the mixtures and grids ship the same way.
"""
