"""Generated images that came out broken: all NaN/Inf latents (decoded to black) or an all-black picture.

A LoRA with NaN values or absurdly large weights that slipped past every check (the engine refuses the ones it can
prove broken, see `lorakit.algorithms.weight_checks`) makes the sampler produce NaN, which decodes to a black image
without any error. `broken_image_comment` turns that into a comment under the generation, naming the extra networks
(LoRAs) of the prompt, the usual cause.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image


def extra_network_names(extra_network_data: dict[str, list[Any]]) -> list[str]:
    """`lora:name` for every extra-network tag of a prompt, in order (from `ExtraNetworkParams.positional[0]`)."""
    names = []
    for kind, params_list in extra_network_data.items():
        for params in params_list:
            positional = getattr(params, "positional", None) or []
            if positional:
                names.append(f"{kind}:{positional[0]}")
    return list(dict.fromkeys(names))


def broken_image_comment(index: int, latent: torch.Tensor, image: Image.Image,
                         extra_network_data: dict[str, list[Any]]) -> str | None:
    """A comment when image `index` is broken (its latent holds NaN/Inf, or every pixel is black), else None."""
    if not bool(torch.isfinite(latent).all()):
        what = "is black: its latents hold NaN/Inf values"
    elif int(np.asarray(image).max(initial=0)) == 0:
        what = "is all black"
    else:
        return None
    names = extra_network_names(extra_network_data)
    cause = (f"; made with {', '.join(names)}: a LoRA with broken or oversized weights is the usual cause, try "
             "without it" if names else "")
    return f"Image {index + 1} {what}{cause}"
