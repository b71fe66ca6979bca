"""Where a run's metrics go: the logger contract (:class:`MetricsLogger`) and the core's own loggers.

The core registers ``jsonl`` (``RUN_DIR/metrics.jsonl``, always on) and ``tensorboard`` (on when TensorBoard is
installed) through ``register_loggers``, like any plugin; ``--loggers`` chooses among everything registered, and
:class:`~ssl_engine.train.metrics_log.MetricsLog` hands each logged step to the chosen ones.
"""
