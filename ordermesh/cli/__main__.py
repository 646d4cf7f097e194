"""``python -m ordermesh.cli``: how ``ordermesh up`` starts its monitor process."""

from ordermesh.cli import main

main()
