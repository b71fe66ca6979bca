"""The token interface of transformer backbones: what masked image modelling (MAE) needs of an encoder.

A vision transformer (Dosovitskiy et al. 2021) cuts the image into a grid of ``p x p`` patches, embeds each as a
token and runs a transformer over the sequence. Masked autoencoders (He et al. 2022) run the encoder on a random
subset of those tokens only, so a task needs two steps the plain :class:`~ssl_engine.backbones.base.Backbone`
contract (images in, feature map out) does not give it: the patch tokens with their positions, and the encoder
on any subset of them. A backbone that offers this subclasses :class:`TokenBackbone`; a task tells it apart from a
convolutional backbone with ``isinstance(backbone, TokenBackbone)`` and never reaches into the model behind it::

    tokens = backbone.tokens(images)                        # (B, N, D): patch embeddings + positions
    keep = noise.argsort(dim=1)[:, :visible]                # (B, K) indices of the visible patches
    encoded = backbone.encode_tokens(tokens, keep)          # (B, P + K, D): P prefix tokens (class), then K
    features = backbone.pool_tokens(encoded)                # (B, D): what ``pooled`` gives on whole images

``encode_tokens(backbone.tokens(images))`` is exactly the backbone's own forward pass on ``images``.
:func:`patchify` and :func:`unpatchify` convert images to and from per-patch pixel rows in the order of the tokens.
"""

from __future__ import annotations

import torch

from ssl_engine.backbones.base import Backbone


class TokenBackbone(Backbone):
    """A backbone made of patch tokens and a transformer over them (a ViT), with the token interface.

    Its feature map is the final patch tokens on their grid ``(B, D, H/p, W/p)`` (``stride == patch_size``); the
    prefix tokens (the class token, registers) are left out of it.

    Attributes:
        patch_size: side ``p`` of a patch in pixels.
        num_prefix_tokens: tokens before the patch tokens in :meth:`encode_tokens`' output (1: the class token).
    """

    patch_size: int
    num_prefix_tokens: int

    def grid(self, image_size: int) -> tuple[int, int]:
        """Rows and columns of patches of a square image of side ``image_size`` (rounded up: inputs are padded)."""
        side = -(-image_size // self.patch_size)
        return side, side

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their position embeddings: ``(B, C, H, W)`` -> ``(B, N, D)``, ``N = H/p * W/p`` in
        row-major order (the order of :func:`patchify`)."""
        raise NotImplementedError

    def encode_tokens(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer on the prefix tokens and the kept patch tokens.

        Args:
            tokens: ``(B, N, D)`` from :meth:`tokens`.
            keep: ``(B, K)`` int64 indices into ``N`` of the tokens to encode; ``None`` keeps all of them.

        Returns:
            ``(B, P + K, D)``, normalised as the backbone's output is: the ``P = num_prefix_tokens`` prefix tokens,
            then the kept tokens in the order of ``keep``.
        """
        raise NotImplementedError

    def pool_tokens(self, encoded: torch.Tensor) -> torch.Tensor:
        """The pooled features of an encoded sequence ``(B, P + K, D)`` -> ``(B, D)`` (see :meth:`pooled`)."""
        raise NotImplementedError

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool_tokens(self.encode_tokens(self.tokens(images)))

    def parameter_depths(self) -> dict[str, int]:
        """How deep each parameter sits, for layer-wise learning-rate decay (Bao et al. 2022, "BEiT"; MAE's
        fine-tuning, He et al. 2022): names as :meth:`named_parameters` gives them, 0 for the embedding (patch
        embedding, position embedding, prefix tokens), ``i + 1`` for transformer block ``i``, ``blocks + 1`` for
        what follows the blocks (the final norm).

        The base class knows no depths and returns ``{}``: every parameter then counts as the top layer.
        """
        return {}

    def token_embedding_names(self) -> set[str]:
        """Names of the learnt free vectors among the parameters (position embedding, class and register
        tokens): not layer weights, so MAE's fine-tuning recipe keeps them out of weight decay. Base class: none."""
        return set()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images ``(B, C, H, W)`` -> per-patch pixels ``(B, N, p * p * C)``, patches in row-major order.

    ``H`` and ``W`` must be multiples of ``p``; within a patch the pixels are ordered ``(row, column, channel)``,
    as in the MAE reference code.
    """
    batch, channels, height, width = images.shape
    rows, columns = height // patch_size, width // patch_size
    if rows * patch_size != height or columns * patch_size != width:
        raise ValueError(f"images of {height}x{width} px are not a whole number of {patch_size} px patches")
    patches = images.reshape(batch, channels, rows, patch_size, columns, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * columns, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, N, p * p * C)`` with ``N = rows * columns`` -> ``(B, C, H, W)``."""
    batch = patches.shape[0]
    rows, columns = grid
    pixels = patches.reshape(batch, rows, columns, patch_size, patch_size, channels)
    return pixels.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, rows * patch_size, columns * patch_size)
