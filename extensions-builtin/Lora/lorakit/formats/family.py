"""The model families, the one spelling every layer uses: `SdVersion` ("Unknown", "SD1", "SD2", "SDXL").

A `str` enum: members compare equal to their names ("SDXL" == SdVersion.SDXL), so the host's `LoadedModel.family`
strings, the cache's stored values and A1111's `network.SdVersion` names all meet here. `KNOWN` are the families a
model can be; a LoRA's version may also be `Unknown`.
"""

from __future__ import annotations

from enum import StrEnum


class SdVersion(StrEnum):
    """A LoRA's or a model's family (A1111's `network.SdVersion` names)."""

    Unknown = "Unknown"
    SD1 = "SD1"
    SD2 = "SD2"
    SDXL = "SDXL"

    @classmethod
    def parse(cls, value: object) -> SdVersion | None:
        """The member spelled `value` ("SD1", ...), or None for anything else."""
        try:
            return cls(str(value))
        except ValueError:
            return None


KNOWN = (SdVersion.SD1, SdVersion.SD2, SdVersion.SDXL)
