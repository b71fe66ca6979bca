"""The light MAE decoder (He et al. 2022, Sec. 3): mask tokens, a few transformer blocks, pixels per patch."""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_positions(width: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``(rows * columns, width)``, row-major (the MAE code's).

    Half the channels encode the row, half the column, each as sines and cosines of geometric frequencies.
    ``width`` must be a multiple of 4.
    """
    if width % 4:
        raise ValueError(f"sine-cosine positions need a width divisible by 4, got {width}")
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (W/4,)
    rows, columns = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )
    embedded = []
    for coordinate in (rows.reshape(-1), columns.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None]  # (N, W/4)
        embedded += [angles.sin(), angles.cos()]
    return torch.cat(embedded, dim=1).float()  # (N, W)


class MAEDecoder(nn.Module):
    """Encoded visible tokens -> pixels of every patch.

    The encoder's output (prefix and visible tokens) is projected to the decoder's width, a shared learned mask
    token fills the place of each masked patch, fixed sine-cosine positions are added (zero for the prefix
    tokens), a few pre-norm transformer blocks run on the whole sequence, and a linear layer predicts each patch's
    ``p * p * 3`` pixels. The paper's decoder is 8 blocks of width 512 for ViT-L at 224 px; the defaults here are
    smaller for 32 px images (64 tokens) and a CPU.

    Args:
        encoder_width: width ``D`` of the encoder's tokens.
        width: the decoder's width (a multiple of ``heads`` and of 4).
        depth: transformer blocks.
        heads: attention heads.
        patch_pixels: values predicted per patch, ``p * p * C``.
        grid: patch rows and columns ``(h, w)``, ``N = h * w``.

    The encoder's prefix tokens (its class token: ``P`` of them, however many the encoder has) go through the
    blocks too, with no position added, as in the MAE code.
    """

    positions: torch.Tensor  # (1, N, width), fixed

    def __init__(
        self,
        encoder_width: int,
        width: int,
        depth: int,
        heads: int,
        patch_pixels: int,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("positions", sincos_positions(width, grid)[None], persistent=False)  # (1, N, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, encoded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predict every patch.

        Args:
            encoded: the encoder's output ``(B, P + K, D)``: prefix tokens, then the visible patches.
            keep: ``(B, K)`` indices of the visible patches among the ``N``.

        Returns:
            ``(B, N, p * p * C)``: predicted pixels of every patch (the loss reads the masked ones).
        """
        tokens = self.embed(encoded)  # (B, P + K, width)
        prefix_count = encoded.shape[1] - keep.shape[1]
        prefix, visible = tokens[:, :prefix_count], tokens[:, prefix_count:]
        batch, count, width = visible.shape[0], math.prod(self.grid), visible.shape[-1]
        patches = self.mask_token.to(visible.dtype).expand(batch, count, width)
        # Every visible token back in its patch's place, mask tokens elsewhere: (B, N, width).
        patches = patches.scatter(1, keep[..., None].expand(-1, -1, width), visible)
        sequence = torch.cat([prefix, patches + self.positions.to(visible.dtype)], dim=1)  # (B, P + N, width)
        for block in self.blocks:
            sequence = block(sequence)
        predicted: torch.Tensor = self.predict(self.norm(sequence[:, prefix_count:]))
        return predicted
