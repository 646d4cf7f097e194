"""Tells customers when their order is confirmed or cancelled: ``python -m
examples.notifications`` (README.md beside this file)."""
