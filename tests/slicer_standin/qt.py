"""TEST STAND-IN for ``qt`` (NOT Qt): a ``QTimer`` that fires only when the test calls :func:`process_events`."""

ACTIVE_TIMERS = []


class Signal:
    def __init__(self) -> None:
        self.slots = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def emit(self, *args) -> None:
        for slot in list(self.slots):
            slot(*args)


class QTimer:
    def __init__(self) -> None:
        self.timeout = Signal()
        self.interval = 0

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def start(self) -> None:
        if self not in ACTIVE_TIMERS:
            ACTIVE_TIMERS.append(self)

    def stop(self) -> None:
        if self in ACTIVE_TIMERS:
            ACTIVE_TIMERS.remove(self)

    def isActive(self) -> bool:
        return self in ACTIVE_TIMERS


def process_events() -> None:
    """One turn of the (imaginary) event loop: every active timer fires once."""
    for timer in list(ACTIVE_TIMERS):
        timer.timeout.emit()
