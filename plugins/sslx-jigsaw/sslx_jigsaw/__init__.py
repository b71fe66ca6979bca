"""sslx plugin: solving jigsaw puzzles (Noroozi & Favaro 2016)."""

from sslx_jigsaw.permutations import permutation_set
from sslx_jigsaw.task import JigsawTask
from sslx_jigsaw.tiles import TileGrid, extract_tiles

__all__ = ["JigsawTask", "TileGrid", "extract_tiles", "permutation_set"]
