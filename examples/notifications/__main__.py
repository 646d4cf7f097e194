"""``python -m examples.notifications``: run the notifications service until Ctrl-C or
SIGTERM, which stop it cleanly (the event being handled is finished and acknowledged)."""

from __future__ import annotations

import asyncio

from examples.notifications.app import SERVICE, app
from ordermesh.logs import configure_logging


def main() -> None:
    # LOG_LEVEL and LOG_FORMAT as for every ordermesh process; FastStream's lines too.
    configure_logging(SERVICE)
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
