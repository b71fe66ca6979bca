"""Heads registered by the core: ``linear`` and ``mlp`` classifiers, the ``upconv`` decoder."""
