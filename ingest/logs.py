"""Structured JSON logs (structlog), one event per line, for machines first.

Request-level events carry device_id and request_number so that one device's story can be
followed through a gateway's log: every refusal and failure at info and above, every answered
request at debug (thousands a second would drown an info log).
"""

import logging
import sys

import structlog


def configure_logging(level: str = "info") -> None:
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
