"""A worker process run in the background: launched in its own process group, its stdout read by a thread, its
protocol lines turned into events, and the whole process tree killed on cancel.

Protocol (one line each, written by ``worker.py``): ``MEDDENOISE {"event": "status", "text": ...}``, ``progress``
(``done``, ``total``), ``metrics`` (``before``, ``after``), ``error`` (``message``), ``done`` (result fields). Other
lines (warnings, tracebacks) are kept as the log tail that explains a crash.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import JobCancelledError, WorkerFailedError

PREFIX = "MEDDENOISE "
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
#: Lines of plain output kept to explain a crash.
LOG_TAIL = 20


def worker_command(python: str, engine: str | os.PathLike, action: str, **options) -> list[str]:
    """The command line of one worker job: ``options`` become ``--name value`` (``_`` -> ``-``); ``True`` becomes a
    bare flag and ``None``/``False`` leave the option out, so optional features are passed only when used."""
    command = [str(python), str(WORKER_SCRIPT), "--engine", str(engine), action]
    for name, value in options.items():
        if value is None or value is False:
            continue
        command.append("--" + name.replace("_", "-"))
        if value is not True:
            command.append(str(value))
    return command


class WorkerJob:
    """One running worker.

    Args:
        command: from :func:`worker_command`.
        env: the environment (inside Slicer: ``slicer.util.startupEnvironment()``, so the worker does not inherit
            the GUI's settings); default: this process's.

    Attributes:
        status: the last status text; ``progress``: ``(done, total)`` in ``progressUnit`` (``slices``, or ``s``
        while adapting to the scan); ``result``: fields of the ``done`` event;
        ``metrics``: the ``metrics`` event (empty without a reference).
    """

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        new_group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {}
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=os.name != "nt",  # its own process group: cancel kills the worker and its children
            **new_group,
        )
        self.status = "Starting"
        self.progress = (0, 0)
        self.progressUnit = "slices"
        self.result: dict = {}
        self.metrics: dict = {}
        self.error = ""
        self.cancelled = False
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Handle the lines that arrived since the last call; returns their events.

        Never blocks with ``timeout=0`` (a GUI timer's call); otherwise waits up to ``timeout`` seconds for a line.
        """
        events = []
        while not self._ended:
            try:
                line = self._lines.get(timeout=timeout) if timeout > 0 else self._lines.get_nowait()
            except queue.Empty:
                break
            timeout = 0.0
            if line is None:
                self._ended = True
                self.process.wait()
                break
            event = self._parse(line)
            if event is not None:
                events.append(event)
        return events

    def _parse(self, line: str) -> dict | None:
        if not line.startswith(PREFIX):
            self.log.append(line)
            return None
        try:
            event = json.loads(line[len(PREFIX) :])
        except json.JSONDecodeError:
            self.log.append(line)
            return None
        kind = event.get("event")
        if kind == "status":
            self.status = event.get("text", "")
        elif kind == "progress":
            self.progress = (int(event["done"]), int(event["total"]))
            self.progressUnit = event.get("unit", "slices")
        elif kind == "metrics":
            self.metrics = {"before": event.get("before", {}), "after": event.get("after", {})}
        elif kind == "error":
            self.error = event.get("message", "")
        elif kind == "done":
            self.result = event
        return event

    @property
    def finished(self) -> bool:
        """The worker has exited and all its output has been handled."""
        return self._ended

    def wait(self, on_event: Callable[[dict], None] | None = None, interval: float = 0.05) -> None:
        """Block until the worker ends, calling ``on_event`` for each event; then :meth:`check`."""
        while not self.finished:
            for event in self.poll(timeout=interval):
                if on_event is not None:
                    on_event(event)
        self.check()

    def cancel(self) -> None:
        """Kill the worker's whole process tree (not just the launcher) and wait for it; nothing is written after."""
        if self.process.poll() is None:
            self.cancelled = True
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
            else:
                with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                    os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def check(self) -> None:
        """Raise :class:`JobCancelledError` or :class:`WorkerFailedError` unless the job completed."""
        if self.cancelled:
            raise JobCancelledError("cancelled; nothing was changed")
        code = self.process.returncode
        if code == 0 and self.result:
            return
        if self.error:
            raise WorkerFailedError(self.error)
        tail = "\n".join(self.log) or "(no output)"
        raise WorkerFailedError(
            f"the denoising worker stopped unexpectedly (exit code {code}); its last output:\n{tail}"
        )
