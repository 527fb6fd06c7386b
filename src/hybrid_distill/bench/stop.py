"""When a bench stops starting new steps: at a deadline of its own (`--deadline`), or once `timeout`
sends SIGTERM. Both only set a flag that the bench reads between steps. Raising from the signal
handler instead, inside a compiled backward, left dynamo's dispatch-mode stack broken on the H100
("trying to set the current ProxyTorchDispatchMode, but one already exists"), and the report after it
failed; a flag lets the step in flight finish and the report run.
"""

import signal
import time
from contextlib import contextmanager


class Stop:
    def __init__(self, deadline_s: float | None = None):
        self.end = None if deadline_s is None else time.monotonic() + deadline_s
        self.reason: str | None = None

    def signalled(self, signum, frame) -> None:
        self.reason = "SIGTERM"

    def __call__(self) -> str | None:
        """Why to stop now ('SIGTERM', 'deadline'), or None to go on."""
        if self.reason is None and self.end is not None and time.monotonic() > self.end:
            self.reason = "deadline"
        return self.reason

    @contextmanager
    def watching(self):
        """SIGTERM sets the flag while the block runs; the previous handler is restored after it."""
        previous = signal.signal(signal.SIGTERM, self.signalled)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
