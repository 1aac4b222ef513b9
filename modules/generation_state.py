"""Per-generation state the host gives extensions, instead of attributes stuck onto the processing object.

Every processing object carries one `GenerationState` (`p.generation_state`), fresh per request:
* `conditioning_stale`: set by a `process_step` callback that changed the text encoders' weights (LoRA text-encoder
  weight schedules); the sampler encodes the prompts again before the next step and clears it.
* typed slots for extensions' own per-generation state, keyed by the extension's state class:
  `p.generation_state.put(MyState(...))`, `p.generation_state.get(MyState)` -> `MyState | None`.
`GenerationRequest` declares what of a processing object an extension's extra network and step callbacks may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass
class GenerationState:
    """Declared per-generation state shared between the host's sampler and extensions (see the module docstring)."""

    conditioning_stale: bool = False
    _slots: dict[type, object] = field(default_factory=dict, repr=False)

    def put(self, value: object) -> None:
        """Keep `value` for this generation under its own class (replacing an earlier one of that class)."""
        self._slots[type(value)] = value

    def get(self, kind: type[T]) -> T | None:
        """The value of class `kind` put for this generation, or None."""
        value = self._slots.get(kind)
        return value if isinstance(value, kind) else None


class GenerationRequest(Protocol):
    """The parts of a processing object that extra networks and step callbacks read and write."""

    sd_model: Any  # modules.sd_model_types.LoadedModel (or None before the model is set)
    comments: list[str]
    extra_generation_params: dict[str, Any]
    is_hr_pass: bool
    steps: int
    generation_state: GenerationState
