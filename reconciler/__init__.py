"""The control loop: sources enqueue job keys, workers observe -> decide -> act -> record.

``reconciler.decide`` is the pure core; ``reconciler.step`` is the only code that touches
models, executors and ``decide`` together; ``reconciler.daemon`` runs it in a worker pool.
"""
