"""Downstream evaluation protocols, registered through the ``register_evaluators`` hook."""

from ssl_engine.eval.context import EvalContext

__all__ = ["EvalContext"]
