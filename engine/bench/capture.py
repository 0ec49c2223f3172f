"""Third-party noise kept out of the bench table: Python warnings and log records raised while a case loads and runs.

TorchInductor, the ONNX exporter and the runtimes underneath warn through `warnings` and through `logging` (torch's
own loggers come with their handlers from `torch._logging` and do not propagate to the root). Printed between the
table's progress lines they bury it, so while a case is measured every Python warning is recorded and every
logger's handlers are swapped for one that records; the report lists them, deduplicated with counts
(`third_party_warnings`). Output that C++ libraries write to the file descriptors themselves is not Python's to
catch and still reaches the console.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


class _Recorder(logging.Handler):
    def __init__(self, tally: Counter):
        super().__init__(logging.WARNING)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        self.tally[("logging", record.name, _first_line(record.getMessage()))] += 1


class ThirdPartyWarnings:
    """Counts of warnings and log records seen inside `capture()` blocks, keyed by (source, category, message)."""

    def __init__(self):
        self.tally: Counter = Counter()

    @contextlib.contextmanager
    def capture(self):
        recorder = _Recorder(self.tally)
        loggers = [logging.getLogger()] + [logger for logger in logging.root.manager.loggerDict.values()
                                           if isinstance(logger, logging.Logger) and logger.handlers]
        saved = [(logger, logger.handlers[:]) for logger in loggers]
        for logger in loggers:
            logger.handlers = [recorder]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            for logger, handlers in saved:
                logger.handlers = handlers
        for warning in caught:
            self.tally[("warnings", warning.category.__name__, _first_line(str(warning.message)))] += 1

    def to_list(self) -> list:
        return [{"source": source, "category": category, "message": message, "count": count}
                for (source, category, message), count in self.tally.most_common()]
