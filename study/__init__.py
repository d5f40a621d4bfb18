"""The quantization study as a tool: a TOML grid of recipes expanded into cells, each converted and evaluated in
fresh processes, stored as one JSON line per cell (`wavq sweep`), and drawn from the stored rows (`wavq report`).

Converter side: needs the `convert`, `eval` and `plot` extras (and `sweep` for Ray); the runtime never imports it.
"""

from .grid import Cell, Grid, GridError, load_grid
from .store import Store

__all__ = ["Cell", "Grid", "GridError", "Store", "load_grid"]
