"""Progress and interrupt state of the generation that is running (one at a time).

Read by `GET /sdapi/v1/progress` and the UI progress bar; written by the sampler loop.
"""

from __future__ import annotations

import threading
import time
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int = 1) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = False
            self.skipped = False
            self.started_at = time.time()
            self.textinfo = ""
            self.current_image = None

    def end(self) -> None:
        with self._lock:
            self.job = ""
            self.started_at = None
            self.sampling_step = self.sampling_steps = 0
            self.job_count = self.job_no = 0

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
        if not self.active or self.job_count <= 0:
            return 0.0
        per_job = 1.0 / self.job_count
        within = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
        return min(1.0, self.job_no * per_job + within * per_job)

    @property
    def eta_relative(self) -> float:
        if not self.active or self.progress <= 0:
            return 0.0
        elapsed = time.time() - (self.started_at or time.time())
        return elapsed / self.progress - elapsed
