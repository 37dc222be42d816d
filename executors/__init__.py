"""Container backends behind one narrow interface.

Nothing in this package imports Django or the rest of the project, except
``executors.registry`` which builds an executor from an ``ExecutorHost`` row.
"""
