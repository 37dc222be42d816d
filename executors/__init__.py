"""Container backends behind one narrow interface.

``base`` is the interface (six verbs and the capability flags the rest of the system reads),
``types`` the values that cross it, ``exceptions`` the only errors that leave it. The real
backends are packages, ``docker`` and ``cloudrun``, built on one config reader (``_config``),
one call layer (``_calls``: retries, error translation, counters) and one backoff formula
(``backoff``); ``mock`` is the in-memory stand-in, whose script language (``script``) the test
suite's Cloud Run fake reads too. ``registry`` builds an executor from an ``ExecutorHost`` row.

Nothing in this package imports Django or the rest of the project.
"""
