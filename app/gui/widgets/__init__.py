"""Thin widgets: they take an adapter's signals in their constructor and only render."""
