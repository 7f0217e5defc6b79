"""Progress lines for the demo: every step says when it starts (elapsed since the demo
began), says it is still running every HEARTBEAT_S, and says how long it took."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

HEARTBEAT_S = 10.0


class StepFailed(Exception):
    """A step failed; the message names the step and the cause in one line."""


class Progress:
    def __init__(self, out: TextIO | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.out: TextIO | None = out or sys.stdout
        self.started = time.monotonic()
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _emit(self, text: str) -> None:
        """Best effort: a reader that went away (a closed pipe, a hung-up terminal) must
        not stop the demo from cleaning up."""
        with self._lock:
            if self.out is None:
                return
            try:
                print(text, file=self.out, flush=True)
            except OSError:
                self.out = None

    def line(self, text: str) -> None:
        self._emit(f"[{self.elapsed():6.1f}s] {text}")

    def detail(self, text: str) -> None:
        """An indented line under the current step."""
        self.line(f"    {text}")

    def plain(self, text: str = "") -> None:
        self._emit(text)

    @contextlib.contextmanager
    def step(self, what: str, how: str = "") -> Iterator[None]:
        """`==> what: how …`, heartbeats while it runs, then `done in Xs`; a failure is
        raised as StepFailed("what: cause")."""
        self.line(f"==> {what}: {how} …" if how else f"==> {what} …")
        began = time.monotonic()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(what, began, stop), daemon=True)
        beat.start()
        try:
            yield
        except StepFailed:
            raise
        except Exception as exc:
            raise StepFailed(f"{what}: {describe(exc)}") from exc
        finally:
            stop.set()
            beat.join()
        self.line(f"    done in {time.monotonic() - began:.1f}s")

    def _heartbeat(self, what: str, began: float, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            self.line(f"    … still {what} ({time.monotonic() - began:.0f}s)")


def describe(exc: BaseException) -> str:
    """One line for an error, gRPC ones by their status code and details."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
