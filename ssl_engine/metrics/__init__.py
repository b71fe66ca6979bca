"""Metrics that pretext tasks report (PSNR of reconstructions, ...), shared through :mod:`ssl_engine.api`."""
