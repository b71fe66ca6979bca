"""Colour tools shared by the colour pretext tasks (colorization, split-brain): CIE Lab, the quantised ab plane,
the output grid of colour decoders and pictures of predicted colours; plugins reach them through
:mod:`ssl_engine.api`."""
