# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One retry with backoff for every platform; each supplies its own test of what is
transient (a reset connection, a busy host) and the advice for when retries run out."""

from __future__ import annotations

import functools
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import PlatformError

ATTEMPTS = 3
DELAY = 0.5  # seconds before the second attempt; doubles each time


def retry(transient, what, fix, attempts=ATTEMPTS, delay=DELAY, sleep=time.sleep):
    """Decorator: retry the call while ``transient(exc)`` says so, waiting ``delay``,
    ``2 * delay``, ...; then raise PlatformError naming ``what`` (a string, or a callable
    given the call's arguments, so a method can name its file and host) and ``fix``.
    Errors that are not transient are raised at once, unchanged."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            for attempt in range(1, attempts + 1):
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if not transient(exc):
                        raise
                    if attempt == attempts:
                        name = what(*args, **kwargs) if callable(what) else what
                        raise PlatformError(
                            "%s failed %d times, last with %s: %s" % (name, attempts, type(exc).__name__, exc), fix
                        ) from exc
                    sleep(delay * 2 ** (attempt - 1))
            return None  # not reached

        return inner

    return wrap
