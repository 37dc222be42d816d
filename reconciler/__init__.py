"""The control loop: sources add keys to one work queue; workers run the step each key names.

``decide`` is the pure core; the job step (``step``, with ``snapshot`` and ``record``) is the only
code that touches models, executors and ``decide`` together; ``claim``, ``cleanup`` and
``host_step`` are the other steps; ``sources`` only enqueue; ``daemon`` runs workers under
leadership and a watchdog, and ``wiring.serve`` puts logs, metrics and signals around it.
"""
