"""Fault injection under load, over real processes: the chaos harness and its tests."""
