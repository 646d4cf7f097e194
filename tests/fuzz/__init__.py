"""Property-based hostile-input tests (Hypothesis) over a real nats-server.

``make test`` runs the small ``default`` profile; ``make fuzz`` the ``fuzz`` profile,
over 10 000 generated requests (``conftest`` explains both).
"""
