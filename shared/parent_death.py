"""A process asks to be stopped when the process that started it dies.

Used by the ``web`` supervisor for its servers (in the child, before exec) and by the run command
for itself (``make`` killed on its own): otherwise the orphans would keep running with nobody to
stop them.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def term_on_parent_death() -> None:
    """SIGTERM to this process when its parent dies (Linux's ``prctl``); elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
