"""The "SD upscale" img2img script as a Script plug-in (A1111's `script_name: "sd upscale"`).

The work is `modules.sd_upscale` (upscale, img2img in overlapping tiles, blend); this file gives it A1111's UI and
positional arguments: `[info, overlap, upscaler_index, scale_factor]` (the upscaler by index into
`GET /sdapi/v1/upscalers` or by name).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import scripts, sd_upscale


class Script(scripts.Script):
    """SD upscale (see the module docstring); img2img only."""

    def title(self) -> str:
        return sd_upscale.TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def ui(self, is_img2img: bool) -> list[Any]:
        names = self.webui.upscalers.names() if self.webui is not None else ["None"]
        info = gr.HTML("<p>Will upscale the image by the selected scale factor; use width and height sliders to "
                       "set tile size</p>")
        overlap = gr.Slider(0, 256, value=64, step=16, label="Tile overlap", elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Scale Factor",
                                 elem_id=self.elem_id("scale_factor"))
        upscaler_index = gr.Radio(names, value=names[0], type="index", label="Upscaler",
                                  elem_id=self.elem_id("upscaler_index"))
        return [info, overlap, upscaler_index, scale_factor]

    def run(self, p: Any, *args: Any) -> Any:
        overlap, upscaler, scale = sd_upscale.parse_args(list(args))
        return sd_upscale.run(self.webui, p, overlap, upscaler, scale)
