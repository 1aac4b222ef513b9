"""Progress and interrupt state of the generation that is running (one at a time).

Read by `GET /sdapi/v1/progress` and the UI progress bar; written by the sampler loop.

A script that runs several generations in one request (an X/Y/Z grid: one per cell) wraps them in
`outer_job(job, count)`: each generation's `begin`/`end` then counts as one of `count` parts of one job (progress
runs from 0 to 1 once over the whole grid, `textinfo` says which part), and an interrupt stops the remaining parts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobState:
    """What the running job is doing. `progress` is in [0, 1]; `eta_relative` in seconds."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False  # `POST /sdapi/v1/skip`: the current batch's sampling ends early, the next batch runs
    started_at: float | None = None
    textinfo: str = ""
    current_image: Any = None  # PIL image preview of the current latent, or None
    outer_count: int = 0  # parts of the running script job (0: no script job)
    outer_no: int = 0  # parts finished so far
    outer_text: str = ""  # e.g. "X/Y/Z plot: cell 3 of 25"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int = 1) -> None:
        with self._lock:
            if self.outer_count:  # one part of a script job: keep its start, name and interrupt
                self.job_count, self.job_no = job_count, 0
                self.sampling_step = self.sampling_steps = 0
                self.current_image = None
                return
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = False
            self.skipped = False
            self.started_at = time.time()
            self.textinfo = ""
            self.current_image = None

    def end(self) -> None:
        with self._lock:
            if self.outer_count:
                self.outer_no = min(self.outer_no + 1, self.outer_count)
                self.sampling_step = self.sampling_steps = 0
                self.job_count = self.job_no = 0
                return
            self.job = ""
            self.started_at = None
            self.sampling_step = self.sampling_steps = 0
            self.job_count = self.job_no = 0

    @contextmanager
    def outer_job(self, job: str, count: int) -> Iterator[None]:
        """Count the generations run inside as `count` parts of one job named `job` (see the module docstring)."""
        self.begin(job, 1)
        with self._lock:
            self.outer_count, self.outer_no, self.outer_text = max(count, 1), 0, ""
        try:
            yield
        finally:
            with self._lock:
                self.outer_count = self.outer_no = 0
                self.outer_text = ""
            self.end()

    @property
    def display_text(self) -> str:
        """The text shown beside the progress bar: the script job's part, then the generation's own text."""
        return ", ".join(text for text in (self.outer_text, self.textinfo) if text)

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        """Skip the rest of the current batch's sampling (A1111's Skip); no-op when nothing runs."""
        if self.active:
            self.skipped = True

    @property
    def active(self) -> bool:
        return self.started_at is not None

    @property
    def progress(self) -> float:
        if not self.active:
            return 0.0
        inner = 0.0
        if self.job_count > 0:
            per_job = 1.0 / self.job_count
            within = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
            inner = min(1.0, self.job_no * per_job + within * per_job)
        if self.outer_count:
            return min(1.0, (self.outer_no + inner) / self.outer_count)
        return inner

    @property
    def eta_relative(self) -> float:
        if not self.active or self.progress <= 0:
            return 0.0
        elapsed = time.time() - (self.started_at or time.time())
        return elapsed / self.progress - elapsed
