"""Container jobs as Django rows, driven to completion by the reconciler.

Importing this package imports nothing from Django, so the pure modules (``states``,
``envparse``) can be used by the pure reconciler core.
"""

__version__ = "0.1.0"
