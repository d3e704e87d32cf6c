"""A worker process run in the background: launched in its own process group, its stdout read by a thread, its
protocol lines turned into events, and the whole process tree killed on cancel.

Protocol (one line each, written by ``worker.py``): ``MEDDENOISE {"event": "status", "text": ...}``, ``progress``
(``done``, ``total``), ``metrics`` (``before``, ``after``), ``error`` (``message``), ``done`` (result fields). Other
lines (warnings, tracebacks) become ``log`` events; the last ones explain a crash.
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
import time
from collections.abc import Callable
from pathlib import Path

from .errors import JobCancelledError, WorkerFailedError

PREFIX = "MEDDENOISE "
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
#: Lines of plain output kept to explain a crash.
LOG_TAIL = 20
#: Win32 process creation flags (``subprocess`` defines them only on Windows): a process group of its own, so cancel
#: reaches the whole tree, and no console window. PythonSlicer is a console program: without the flag a black window
#: pops up beside Slicer for every run (Slicer's ``launchConsoleProcess`` hides it with ``STARTUPINFO`` for the same
#: reason; ``CREATE_NO_WINDOW`` does not even create the console).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def process_options(system: str = os.name) -> dict:
    """``subprocess.Popen`` options for a worker on ``system`` (``os.name``): its own process group, no console."""
    if system == "nt":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


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
            the GUI's settings); default: this process's. The worker always writes UTF-8.

    Attributes:
        status: the last status text; ``progress``: ``(done, total)`` in ``progressUnit`` (``slices``, or ``s``
        while adapting to the scan); ``result``: fields of the ``done`` event;
        ``metrics``: the ``metrics`` event (empty without a reference); ``transcript``: every status text and plain
        output line, for the panel's log.
    """

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env, PYTHONIOENCODING="utf-8")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            errors="replace",  # a stray byte from a library must not kill the reader and hang the job
            bufsize=1,
            env=env,
            **process_options(),
        )
        self.status = "Starting"
        self.progress = (0, 0)
        self.progressUnit = "slices"
        self.result: dict = {}
        self.metrics: dict = {}
        self.error = ""
        self.cancelled = False
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.transcript: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.process.stdout:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError) as error:  # the pipe broke: say so instead of waiting forever
            self._lines.put(f"(worker output unreadable: {error})")
        finally:
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
            events.append(self._parse(line))
        return events

    def _parse(self, line: str) -> dict:
        try:
            event = json.loads(line[len(PREFIX) :]) if line.startswith(PREFIX) else None
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            self.log.append(line)
            self.transcript.append(line)
            return {"event": "log", "text": line}
        kind = event.get("event")
        if kind == "status":
            self.status = event.get("text", "")
            self.transcript.append(self.status)
        elif kind == "progress":
            self.progress = (int(event["done"]), int(event["total"]))
            self.progressUnit = event.get("unit", "slices")
        elif kind == "metrics":
            self.metrics = {"before": event.get("before", {}), "after": event.get("after", {})}
        elif kind == "error":
            self.error = event.get("message", "")
            self.transcript.append(self.error)
        elif kind == "done":
            self.result = event
        return event

    @property
    def elapsed(self) -> float:
        """Seconds since the worker started."""
        return time.monotonic() - self.started

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
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, **process_options()
                )
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
