"""The "SD upscale" img2img script (A1111's `script_name: "sd upscale"`): upscale, img2img in overlapping tiles,
blend the tiles back together.

`run(webui, p, overlap, upscaler, scale_factor)` upscales `p.init_images[0]` by `scale_factor` with the named (or
indexed) upscaler of `webui.upscalers`, splits it into `p.width` x `p.height` tiles overlapping by `overlap`
pixels, runs every tile through img2img (`p.batch_size` tiles at a time, each batch with the next seed) and
combines the results with linear blends across the overlaps. `p.n_iter` repeats the whole upscale with seeds
`seed + n`. A mask is ignored (the whole picture is upscaled, as in A1111). A1111's script arguments are `[info, overlap, upscaler_index, scale_factor]`; see `parse_args`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from modules import images
from modules.processing import Processed, ProcessingError, fixed_seed, process_images, samples_folder
from modules.resize import flatten

log = logging.getLogger(__name__)

SCRIPT_NAME = "sd upscale"
TITLE = "SD upscale"


@dataclass
class Tile:
    """One tile of a grid: its left edge and image."""

    x: int
    image: Image.Image


@dataclass
class TileRow:
    """One row of tiles: its top edge, height and tiles."""

    y: int
    height: int
    tiles: list[Tile]


@dataclass
class Grid:
    """An image cut into overlapping tiles of `tile_w` x `tile_h` (A1111's `images.Grid`)."""

    rows: list[TileRow]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Grid:
    """Cut `image` into tiles overlapping by `overlap`, evenly spread so the last tile ends at the edge."""
    w, h = image.size
    cols = max(math.ceil((w - overlap) / (tile_w - overlap)), 1)
    rows = max(math.ceil((h - overlap) / (tile_h - overlap)), 1)
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        tiles = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            tiles.append(Tile(x, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append(TileRow(y, tile_h, tiles))
    return grid


def _ramp(length: int, across: int, horizontal: bool) -> Image.Image:
    """A mask rising from 0 to 255 over `length` pixels (along x when `horizontal`), `across` pixels wide."""
    ramp = (np.arange(length, dtype=np.float32) * 255 / max(length, 1)).astype(np.uint8)
    array = np.tile(ramp[None, :], (across, 1)) if horizontal else np.tile(ramp[:, None], (1, across))
    return Image.fromarray(array, "L")


def combine_grid(grid: Grid) -> Image.Image:
    """Paste the tiles back, blending each one into its left and upper neighbours across the overlap."""
    overlap = grid.overlap
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for row in grid.rows:
        line = Image.new("RGB", (grid.image_w, row.height))
        for tile in row.tiles:
            if tile.x == 0 or overlap <= 0:
                line.paste(tile.image, (tile.x, 0))
                continue
            line.paste(tile.image.crop((0, 0, overlap, row.height)), (tile.x, 0),
                       mask=_ramp(overlap, row.height, True))
            line.paste(tile.image.crop((overlap, 0, grid.tile_w, row.height)), (tile.x + overlap, 0))
        if row.y == 0 or overlap <= 0:
            combined.paste(line, (0, row.y))
            continue
        combined.paste(line.crop((0, 0, line.width, overlap)), (0, row.y), mask=_ramp(overlap, line.width, False))
        combined.paste(line.crop((0, overlap, line.width, row.height)), (0, row.y + overlap))
    return combined


def parse_args(args: list[Any]) -> tuple[int, int | str, float]:
    """(overlap, upscaler index or name, scale factor) from A1111's `[info, overlap, upscaler_index, scale]`
    (missing ones take A1111's defaults 64, "None", 2); ProcessingError naming a bad one."""
    values = list(args) + [None] * (4 - len(args))
    overlap, upscaler, scale = values[1], values[2], values[3]
    overlap = 64 if overlap is None else overlap
    upscaler = "None" if upscaler is None else upscaler
    scale = 2.0 if scale is None else scale
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap < 1024:
        raise ProcessingError(f"sd upscale: overlap (script_args[1]) must be a number of pixels, got {overlap!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 1 <= scale <= 8:
        raise ProcessingError(f"sd upscale: scale factor (script_args[3]) must be between 1 and 8, got {scale!r}")
    if not isinstance(upscaler, (int, str)) or isinstance(upscaler, bool):
        raise ProcessingError(f"sd upscale: upscaler (script_args[2]) must be an index or a name, got {upscaler!r}")
    return int(overlap), upscaler, float(scale)


def run(webui: Any, p: Any, overlap: int, upscaler: int | str, scale_factor: float) -> Processed:
    """Run SD upscale on `p` (a validated `StableDiffusionProcessingImg2Img`); see the module docstring."""
    try:
        entry = webui.upscalers.by_index_or_name(upscaler)
    except ValueError as exc:
        raise ProcessingError(f"sd upscale: {exc}") from exc
    if overlap >= min(p.width, p.height):
        raise ProcessingError(f"sd upscale: overlap {overlap} must be smaller than the tile size {p.width}x{p.height}")
    source = flatten(p.init_images[0])
    try:
        if entry.name == "None":
            upscaled = source
        else:
            upscaled = webui.upscalers.upscale(source, entry.name, scale_factor)
    except ValueError as exc:
        raise ProcessingError(f"sd upscale: {exc}") from exc
    grid = split_grid(upscaled, p.width, p.height, overlap)
    work = [tile for row in grid.rows for tile in row.tiles]
    batch = p.batch_size
    batches = math.ceil(len(work) / batch)
    seed = fixed_seed(p.seed)
    log.info("SD upscale: %d tiles of %dx%d in %d batch(es), %d time(s)", len(work), p.width, p.height, batches,
             p.n_iter)
    extra = {"SD upscale overlap": overlap, "SD upscale upscaler": entry.name}
    results: list[Image.Image] = []
    infotext = ""
    first: Processed | None = None
    interrupted = False
    for n in range(p.n_iter):
        tile_seed = seed + n
        outputs: list[Image.Image] = []
        for index in range(batches):
            part = [tile.image for tile in work[index * batch:(index + 1) * batch]]
            tile_p = dataclasses.replace(p, init_images=part, batch_size=len(part), n_iter=1, seed=tile_seed,
                                         mask=None, latent_mask=None, do_not_save_samples=True, do_not_save_grid=True)
            tile_p.extra_generation_params.update(extra)
            processed = process_images(webui, tile_p)
            first = first or processed
            infotext = infotext or processed.info
            tile_seed = processed.seed + 1
            outputs.extend(processed.images)
            if processed.interrupted:
                interrupted = True
                break
        for tile, image in zip(work, outputs + [Image.new("RGB", (p.width, p.height))] * (len(work) - len(outputs))):
            tile.image = image
        combined = combine_grid(grid)
        results.append(combined)
        if not p.do_not_save_samples and bool(webui.options.get("samples_save")):
            images.save_image(combined, samples_folder(webui, p.mode), seed=seed + n, infotext=infotext,
                              pnginfo_enabled=bool(webui.options.get("enable_pnginfo")))
        if interrupted:
            break
    assert first is not None
    return dataclasses.replace(first, images=results, infotexts=[infotext] * len(results), seed=seed,
                               all_seeds=[seed + n for n in range(len(results))], width=upscaled.width,
                               height=upscaled.height, interrupted=interrupted,
                               all_prompts=[p.prompt] * len(results),
                               all_negative_prompts=[p.negative_prompt] * len(results))
