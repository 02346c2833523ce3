"""Pure-Python services of the operator app (no Qt): settings, daemon supervision, dashboard models.

The Qt side (:mod:`app.gui`) wraps these in small QObject adapters; an import-linter contract in
``pyproject.toml`` keeps Qt out of this package.
"""
