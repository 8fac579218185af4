"""What every stage script shares: logging set-up and one-line errors for the library's own exceptions."""
from __future__ import annotations

import logging
import os
import sys


def run(main) -> None:
    """Call `main()`; an error raised by this package (bad params, bad stimulus line, missing or corrupt file)
    prints as one line on stderr and exits 1. Set EMOTION_CIRCUITS_DEBUG=1 for the traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except Exception as err:  # noqa: BLE001 - only our own error classes are shortened
        if type(err).__module__.startswith("emotion_circuits") and not os.environ.get("EMOTION_CIRCUITS_DEBUG"):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        raise
