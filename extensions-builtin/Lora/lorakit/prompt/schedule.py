"""Step schedules of a LoRA's weight: `start=`/`stop=` gates and `w@step` keyframes.

* `start=N` / `stop=N`: the LoRA is active while start <= step < stop. N is a sampler step (counted from 0 within a
  pass) when it is a whole number >= 1 or 0, a fraction of the pass when 0 < N < 1 (`stop=0.5` = first half).
* Keyframes, in the weight position or in `te=`/`unet=`: `0.2@0,1@0.5` or `te=0.1@1,0.6@6`: the weight is
  interpolated linearly between keyframes, held at the first value before the first and at the last after the
  last. Keyframe positions follow the same rule (whole numbers = steps, fractions = part of the pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LoraError


class ScheduleError(LoraError):
    """A schedule that cannot be understood; the message quotes it."""


def _position(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScheduleError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ScheduleError(f"{what} {text!r} must be a finite number >= 0")
    return value


def step_of(position: float, total: int) -> float:
    """A position as a step: fractions (0 < p < 1) scale by the pass length, anything else is a step number."""
    return position * total if 0 < position < 1 else position


@dataclass(frozen=True)
class Schedule:
    """A weight over the sampling steps: keyframes (position, weight), sorted by position."""

    keyframes: tuple[tuple[float, float], ...]

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """`"0.2@0,1@0.5"` -> keyframes. A plain number is a constant."""
        frames = []
        for part in text.split(","):
            weight, sep, position = part.partition("@")
            try:
                value = float(weight)
            except ValueError:
                raise ScheduleError(f"weight {weight.strip()!r} in {text!r} is not a number") from None
            if not math.isfinite(value):
                raise ScheduleError(f"weight {weight.strip()!r} in {text!r} is not finite")
            frames.append((_position(position, f"step in {text!r}") if sep else 0.0, value))
        return cls(tuple(sorted(frames)))

    @property
    def is_constant(self) -> bool:
        return len({w for _, w in self.keyframes}) <= 1

    def at(self, step: int, total: int) -> float:
        """The weight at `step` of a `total`-step pass. Keyframes are taken in step order once fractions are turned
        into steps (`0.9@0.5,1@3` on a 20-step pass: step 3, then step 10); equal steps keep their written order."""
        frames = sorted(((step_of(p, total), w) for p, w in self.keyframes), key=lambda frame: frame[0])
        if step <= frames[0][0]:
            return frames[0][1]
        for (p0, w0), (p1, w1) in zip(frames, frames[1:]):
            if step == p1:  # exactly the keyframe's weight (interpolation can miss it by an ulp: a needless rewrite)
                return w1
            if step < p1:
                return w0 if p1 == p0 else w0 + (w1 - w0) * (step - p0) / (p1 - p0)
        return frames[-1][1]


def parse_gate(text: str, what: str) -> float:
    """A `start=`/`stop=` value."""
    return _position(text, what)


def gate_open(step: int, total: int, start: float | None, stop: float | None) -> bool:
    """True when the LoRA is active at `step` (start inclusive, stop exclusive)."""
    if start is not None and step < step_of(start, total):
        return False
    return not (stop is not None and step >= step_of(stop, total))
