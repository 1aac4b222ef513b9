"""The model families, the one spelling every layer uses: `SdVersion` ("Unknown", "SD1", "SD2", "SDXL", "Flux").

A `str` enum: members compare equal to their names ("SDXL" == SdVersion.SDXL), so the host's `LoadedModel.family`
strings, the cache's stored values and A1111's `network.SdVersion` names all meet here. `KNOWN` are the families a
model can be; a LoRA's version may also be `Unknown`. The metadata spellings trainers write for each family (kohya's
`ss_base_model_version`, modelspec's `architecture`) are tables here, read by the detector and written by the tools.
"""

from __future__ import annotations

from enum import StrEnum


class SdVersion(StrEnum):
    """A LoRA's or a model's family (A1111's `network.SdVersion` names)."""

    Unknown = "Unknown"
    SD1 = "SD1"
    SD2 = "SD2"
    SDXL = "SDXL"
    Flux = "Flux"

    @classmethod
    def parse(cls, value: object) -> SdVersion | None:
        """The member spelled `value` ("SD1", ...), or None for anything else."""
        try:
            return cls(str(value))
        except ValueError:
            return None


KNOWN = (SdVersion.SD1, SdVersion.SD2, SdVersion.SDXL, SdVersion.Flux)


def known(value: object) -> SdVersion | None:
    """The family spelled `value` when it is one a model can be (SD1, SD2, SDXL, Flux), else None."""
    version = SdVersion.parse(value)
    return version if version in KNOWN else None


def layout_of(family: str) -> SdVersion:
    """The UNet block layout a family uses: SD2 shares SD1's."""
    return SdVersion.SDXL if family == SdVersion.SDXL else SdVersion.SD1


# What trainers write per family: modelspec `architecture` of a LoRA, kohya `ss_base_model_version`.
MODELSPEC_ARCHITECTURES = {SdVersion.SD1: "stable-diffusion-v1/lora", SdVersion.SD2: "stable-diffusion-v2/lora",
                           SdVersion.SDXL: "stable-diffusion-xl-v1-base/lora", SdVersion.Flux: "flux-1-dev/lora"}
KOHYA_BASE_VERSIONS = {SdVersion.SD1: "sd_v1", SdVersion.SD2: "sd_v2", SdVersion.SDXL: "sdxl_base_v1-0",
                       SdVersion.Flux: "flux1"}
# How they are read back: substrings of modelspec's architecture, prefixes of kohya's base version (first match).
MODELSPEC_MARKERS = (("flux-1", SdVersion.Flux), ("stable-diffusion-xl", SdVersion.SDXL), ("stable-diffusion-v2", SdVersion.SD2),
                     ("stable-diffusion-v1", SdVersion.SD1))
KOHYA_BASE_PREFIXES = (("flux", SdVersion.Flux), ("sdxl", SdVersion.SDXL), ("sd_v2", SdVersion.SD2), ("sd_v1", SdVersion.SD1))
# Widths: of the cross-attention context (attn2.to_k's input), of the (first) text encoder.
CONTEXT_WIDTHS = {768: SdVersion.SD1, 1024: SdVersion.SD2, 2048: SdVersion.SDXL}
TEXT_ENCODER_WIDTHS = {768: SdVersion.SD1, 1024: SdVersion.SD2}
