"""How every process of the product logs: one format, and the libraries that speak per request or
per migration (httpx at every policy request or upload chunk, alembic at every start) quiet unless
asked for with --verbose."""

from __future__ import annotations

import logging

QUIET_LOGGERS = ("httpx", "httpcore", "alembic")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
