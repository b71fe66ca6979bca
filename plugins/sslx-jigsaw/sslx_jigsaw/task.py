"""Solving jigsaw puzzles: Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles" (ECCV).

Each image is cut into 3x3 tiles (:mod:`sslx_jigsaw.tiles`), the tiles are shuffled by one permutation of
a fixed set of ``P`` (:mod:`sslx_jigsaw.permutations`), and a context-free network, the shared backbone run
on each tile on its own (siamese, shared weights), feeds the 9 concatenated tile features to a classifier that
names the permutation. Shortcuts are blocked as in the paper's Sec. 3.2: random gap and jitter between tiles,
each tile standardised on its own (no matching by mean colour or contrast), and a share of grayscale puzzles
(no matching by chromatic aberration; 0.3 by default, the share common reimplementations of the paper use).
The paper's further per-channel spatial jitter of the tiles is not done: at the small image sizes this engine
trains on, 1-2 px is a large part of a tile.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from ssl_engine import api
from sslx_jigsaw.drawing import draw_puzzles
from sslx_jigsaw.permutations import permutation_set
from sslx_jigsaw.tiles import (
    MIN_TILE,
    PAPER_TILE_FRACTION,
    TILES,
    TileGrid,
    extract_tiles,
    smallest_image_size,
    to_grayscale,
)


class JigsawTask(api.PretextTask):
    """Predict which of ``P`` permutations shuffled the 3x3 tiles of an image.

    Views: 9 tiles per image, rows ``b * 9 ... b * 9 + 8`` of the inputs in *input-position* order; input
    position ``i`` of sample ``b`` shows the tile cut from cell ``permutations[targets[b], i]`` (cells
    numbered row-major, 0 = top left). Head on the 9 pooled tile features concatenated in input-position
    order, ``(B, 9 * D)`` -> ``P`` logits; cross-entropy.

    ``min_image_size`` is 24 px: 8 px cells give ``round(8 * 64 / 75) = 7`` px tiles, the smallest allowed
    (:data:`sslx_jigsaw.tiles.MIN_TILE`); a smaller ``tile_fraction`` needs larger images, which the
    constructor checks.
    """

    name = "jigsaw"
    summary = "predict the permutation that shuffled the 3x3 tiles of each image"
    paper = "Noroozi & Favaro 2016, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles"
    views = TILES
    min_image_size = smallest_image_size(PAPER_TILE_FRACTION)
    default_image_size = 64
    default_head = "mlp"  # concatenation then fully connected layers, as the paper's fc7/fc8
    settings = (
        api.TaskSetting(
            "permutations",
            int,
            100,
            "size P of the permutation set, the classes (paper: 100 is the best tradeoff)",
            minimum=2,
            maximum=1000,
        ),
        api.TaskSetting(
            "tile_fraction",
            float,
            PAPER_TILE_FRACTION,
            "tile side / cell side; the rest of the cell is the random gap and jitter (paper: 64/75)",
            minimum=0.25,
            maximum=1.0,
        ),
        api.TaskSetting(
            "gray_probability",
            float,
            0.3,
            "share of images whose tiles are all made grayscale, against chromatic-aberration shortcuts",
            minimum=0.0,
            maximum=1.0,
        ),
    )

    def __init__(self, context: api.TaskContext) -> None:
        super().__init__(context)
        self.grid = TileGrid.for_images(context.image_size, self.hparams["tile_fraction"])
        if self.grid.tile < MIN_TILE:
            self._refuse(context.image_size)
        chosen = permutation_set(self.hparams["permutations"])  # (P, 9) uint8, cached and read-only
        self.permutations = torch.from_numpy(chosen.astype("int64"))  # int64 to index with
        self._permutations_on: dict[torch.device, torch.Tensor] = {}

    def _refuse(self, image_size: int) -> None:
        fraction = self.hparams["tile_fraction"]
        raise api.ImageSizeError(
            f"task {self.name!r} needs images of at least {smallest_image_size(fraction)} px with "
            f"tile_fraction={fraction:.4g} (tiles of {MIN_TILE} px or more); got {image_size} px "
            f"(raise --image-size or jigsaw.tile_fraction)"
        )

    def permutations_on(self, device: torch.device) -> torch.Tensor:
        """The permutation set on ``device``, ``(P, 9)`` int64 (copied once per device, not every step)."""
        if device not in self._permutations_on:
            self._permutations_on[device] = self.permutations.to(device)
        return self._permutations_on[device]

    def build_modules(self) -> nn.ModuleDict:
        classes = self.hparams["permutations"]
        return nn.ModuleDict({"head": self.context.make_head(TILES * self.context.feature_dim, classes)})

    def pseudo_labels(self, images: torch.Tensor, random: api.BatchRandom) -> api.PretextBatch:
        """Cut, shuffle, gray and standardise the tiles of the whole batch.

        Args:
            images: ``(B, 3, S, S)`` float in [0, 1].
            random: per-sample randomness.

        Returns:
            inputs ``(B * 9, 3, tile, tile)`` (per tile and channel zero mean, unit variance), targets
            ``(B,)`` permutation indices, views 9, extras ``offsets`` ``(B, 9, 2)`` (row, column of each
            cell's tile inside the cell, row-major cell order), ``permutations`` ``(B, 9)`` (the cell shown at
            each input position) and ``gray`` ``(B,)`` bool.
        """
        grid = self.grid
        if images.shape[-1] != grid.image_size:  # e.g. a caller other than the training loop
            grid = TileGrid.for_images(images.shape[-1], self.hparams["tile_fraction"])
            if grid.tile < MIN_TILE:
                self._refuse(images.shape[-1])
        permutations = self.permutations_on(images.device)
        targets = random.randint(0, len(permutations))  # (B,)
        # One offset per cell is both the gap to the neighbouring tiles and the jitter.
        offsets = random.randint(0, grid.max_offset + 1, TILES, 2)  # (B, 9, 2), row-major cell order
        gray = random.bernoulli(self.hparams["gray_probability"])  # (B,)
        cells = permutations[targets]  # (B, 9): the cell shown at each input position
        shown_offsets = offsets.gather(1, cells[..., None].expand(-1, -1, 2))  # (B, 9, 2), position order
        tiles = extract_tiles(images, grid, cells, shown_offsets)  # (B, 9, 3, t, t), already shuffled
        tiles = to_grayscale(tiles, gray)
        inputs = api.standardize_each(tiles.flatten(0, 1))  # (B*9, 3, t, t)
        extras = {"offsets": offsets, "permutations": cells, "gray": gray}
        return api.PretextBatch(inputs, targets, views=TILES, extras=extras)

    def forward(
        self, backbone: api.Backbone, modules: nn.ModuleDict, aux: nn.ModuleDict, batch: api.PretextBatch
    ) -> api.TaskOutput:
        """Siamese pass: each tile alone through the shared backbone, then the head on the 9 features.

        Args:
            backbone: the shared backbone.
            modules: ``{"head": (B, 9 * D) -> (B, P)}``.
            aux: unused.
            batch: from :meth:`pseudo_labels`.

        Returns:
            The ``jigsaw`` cross-entropy, ``accuracy`` and the logits ``(B, P)``.
        """
        # Tiles never see each other in the backbone (the paper's context-free network): only the head does.
        features = backbone.pooled(batch.inputs)  # (B*9, D)
        joined = features.reshape(-1, TILES * features.shape[1])  # (B, 9*D), in input-position order
        logits = modules["head"](joined)  # (B, P)
        loss = self.context.loss_fn(logits.float(), batch.targets)
        return api.TaskOutput({"jigsaw": loss}, {"accuracy": api.accuracy(logits, batch.targets)}, logits)

    def draw(self, images: torch.Tensor, batch: api.PretextBatch, output: api.TaskOutput | None) -> Image.Image:
        """``sslx show``: each image cut into its numbered cells, its tiles solved, the tiles shuffled as the
        network gets them (each with its cell's number, so the grid reads as the permutation) and, after a run,
        the tiles put back by the predicted permutation (crossed out in red when it is wrong)."""
        grid = self.grid
        if images.shape[-1] != grid.image_size:
            grid = TileGrid.for_images(images.shape[-1], self.hparams["tile_fraction"])
        predicted = None
        if output is not None and output.predictions is not None:
            predicted = output.predictions.detach().argmax(dim=1).cpu()
        share = self.hparams["gray_probability"]
        caption = (
            f"Numbers: the cell each tile was cut from. Yellow boxes: the tiles, at a random place in their cells "
            f"(a gap and a jitter, so edges do not run on from tile to tile). Each tile is normalised on its own "
            f"(zero mean, unit variance: hence the flat, washed-out colours) and {share:.0%} of puzzles are grey "
            f"(colour dropped), so tiles cannot be matched by brightness or colour fringes. The network sees the "
            f"shuffled tiles one at a time and names the permutation, one of {len(self.permutations)}."
        )
        return draw_puzzles(
            images,
            batch.inputs,
            batch.extras["permutations"].cpu(),
            batch.extras["offsets"].cpu(),
            batch.extras["gray"].cpu(),
            grid,
            targets=batch.targets.cpu(),
            permutations=self.permutations,
            predicted=predicted,
            title=f"{self.name}: {self.summary}",
            caption=caption,
        )
