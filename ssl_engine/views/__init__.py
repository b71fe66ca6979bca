"""Batched, on-device view augmentations shared by the joint-embedding methods (SimCLR, BYOL, MoCo, DINO, Barlow
Twins, VICReg): random resized crops, colour jitter, grayscale, Gaussian blur, solarization, each drawn per view from
a :class:`~ssl_engine.randomness.BatchRandom` and applied to the whole batch in one pass. Plugins reach them through
:mod:`ssl_engine.api`."""
