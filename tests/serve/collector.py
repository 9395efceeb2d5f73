"""A request callback for the in-process scheduler tests: keeps every event and signals the last one."""

from __future__ import annotations

import threading


class Collector:
    def __init__(self):
        self.events = []
        self.done = threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if event.finish_reason is not None or event.error is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)
