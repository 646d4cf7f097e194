"""Tapping NATS subjects: decode ordermesh's messages (and anyone else's) for a terminal
or for ``jq``. The CLI (``ordermesh tap``) is a thin layer over this package."""
