"""Encoder FLOPs per image of a ViT under MAE's masking: the encoder runs on the visible patches only.

For each mask ratio the encoder (``backbone.encode_tokens(backbone.tokens(images), keep)``, the token interface
MAE uses) is run on a batch with that share of the patches masked, under ``torch.utils.flop_counter.
FlopCounterMode``, forward only and forward + backward; the MAE decoder's FLOPs at the task's default size are
given beside. Nothing is timed, so the figures do not depend on the machine.

Usage::

    python benchmarks/vit_flops.py [--backbone timm:vit_tiny_patch16_224] [--image-size 32] [--ratios 0,0.5,0.75]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssl_engine.api import BatchRandom, TokenBackbone
from ssl_engine.plugins import get_host

BATCH = 8


def count(function) -> int:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="timm:vit_tiny_patch16_224")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--ratios", default="0,0.5,0.75")
    args = parser.parse_args()
    from sslx_mae.decoder import MAEDecoder
    from sslx_mae.masking import random_masking

    torch.manual_seed(0)
    backbone = get_host().registry.backbones[args.backbone].obj(3, args.image_size)
    if not isinstance(backbone, TokenBackbone):
        raise SystemExit(f"{args.backbone} has no token interface (not a plain ViT)")
    images = torch.randn(BATCH, 3, args.image_size, args.image_size)
    grid = backbone.grid(args.image_size)
    patches = grid[0] * grid[1]
    decoder = MAEDecoder(backbone.feature_dim, 128, 2, 4, backbone.patch_size**2 * 3, grid)
    print(f"{args.backbone} at {args.image_size} px: patch {backbone.patch_size}, {patches} patches + "
          f"{backbone.num_prefix_tokens} class token, width {backbone.feature_dim}")  # fmt: skip
    print()
    print("| mask ratio | visible patches | encoder GFLOP/image, forward | forward + backward | relative | "
          "MAE decoder GFLOP/image, forward |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    base = None
    for ratio in (float(text) for text in args.ratios.split(",")):
        if ratio == 0:
            keep = torch.arange(patches).expand(BATCH, -1)
        else:
            keep, _, _ = random_masking(BatchRandom(0, 0, "mae", BATCH), patches, ratio)

        def forward(keep: torch.Tensor = keep) -> torch.Tensor:
            return backbone.encode_tokens(backbone.tokens(images), keep)

        with torch.no_grad():
            forward_flops = count(forward) / BATCH
            decoder_flops = count(lambda keep=keep: decoder(forward(), keep)) / BATCH - forward_flops
        both = count(lambda: forward().sum().backward()) / BATCH
        base = base or forward_flops
        print(f"| {ratio:g} | {keep.shape[1]} | {forward_flops / 1e9:.4f} | {both / 1e9:.4f} | "
              f"{forward_flops / base:.2f} | {decoder_flops / 1e9:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
