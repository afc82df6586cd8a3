"""A bound on requests answered at once: one more gets a 503 with ``Retry-After`` instead of queueing without end."""

from __future__ import annotations

from collections.abc import Callable

from drpo_dspy.serve.errors import APIError


class Admission:
    """Counts requests in progress (used from the event loop only, so no lock); ``enter`` returns the release."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    def enter(self) -> Callable[[], None]:
        if self.active >= self.limit:
            raise APIError(503, f"The server is already answering {self.limit} requests, its limit; retry shortly.",
                           type="server_busy", code="server_busy", headers={"Retry-After": "1"})
        self.active += 1
        released = False

        def release() -> None:  # idempotent: a stream may end, and be collected, after its slot was freed
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release
