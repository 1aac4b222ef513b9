"""Image grids with axis labels (what A1111's `images.image_grid` and `draw_grid_annotations` draw).

`annotated_grid(images, cols, x_labels, y_labels, margin)` places equally sized cells row by row on a white canvas,
`margin` pixels apart, with a label strip above the columns (one label per column, centred, wrapped to the cell width)
and one left of the rows (wrapped to `row_label_width`). It returns the image and its `GridLayout`, which says where
every cell and label lies, so callers (and tests) can find a cell's pixels or its label's. Labels are black text in
PIL's bundled FreeType font at a size that follows the cell size (A1111's `(width + height) // 25`, at least 10 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

LABEL_PADDING = 4  # pixels of white above and below a label's lines
LINE_SPACING = 2


@dataclass(frozen=True)
class GridLayout:
    """Where the parts of a grid lie: cell size, columns x rows, the margin, the label strips' sizes."""

    cell_width: int
    cell_height: int
    cols: int
    rows: int
    margin: int = 0
    left: int = 0  # width of the row-label strip (0: none)
    top: int = 0  # height of the column-label strip (0: none)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole grid image."""
        return (self.left + self.cols * self.cell_width + (self.cols - 1) * self.margin,
                self.top + self.rows * self.cell_height + (self.rows - 1) * self.margin)

    def cell_box(self, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the cell in column `col`, row `row`."""
        x = self.left + col * (self.cell_width + self.margin)
        y = self.top + row * (self.cell_height + self.margin)
        return x, y, x + self.cell_width, y + self.cell_height

    def column_label_box(self, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of column `col`'s label strip (empty when there are no column labels)."""
        x0, _, x1, _ = self.cell_box(col, 0)
        return x0, 0, x1, self.top

    def row_label_box(self, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of row `row`'s label strip (empty when there are no row labels)."""
        _, y0, _, y1 = self.cell_box(0, row)
        return 0, y0, self.left, y1


def font_size_for(cell_width: int, cell_height: int) -> int:
    """The label font size for cells of this size."""
    return max(10, (cell_width + cell_height) // 25)


def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled font at `size` pixels (no font file is needed)."""
    return ImageFont.load_default(size)


def wrap_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` at spaces (a single long word stays on its own line)."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def render_label(text: str, width: int, font_size: int) -> Image.Image:
    """One label: `text` wrapped to `width`, each line centred, black on white, with `LABEL_PADDING` above and below."""
    font = label_font(font_size)
    lines = wrap_text(text, font, width)
    line_height = font_size + LINE_SPACING
    height = 2 * LABEL_PADDING + line_height * len(lines)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        x = (width - font.getlength(line)) / 2
        draw.text((x, LABEL_PADDING + index * line_height), line, fill="black", font=font)
    return image


def image_grid(images: Sequence[Image.Image], cols: int, margin: int = 0) -> tuple[Image.Image, GridLayout]:
    """The images row by row, `cols` per row, `margin` pixels apart, without labels."""
    return annotated_grid(images, cols, None, None, margin)


def annotated_grid(images: Sequence[Image.Image], cols: int, x_labels: Sequence[str] | None,
                   y_labels: Sequence[str] | None, margin: int = 0, row_label_width: int | None = None,
                   font_size: int | None = None) -> tuple[Image.Image, GridLayout]:
    """A grid of `images` (all the size of the first) with optional column and row labels; see the module docstring.
    Empty label lists (or all-empty labels) draw no strip."""
    if not images:
        raise ValueError("a grid needs at least one image")
    cell_w, cell_h = images[0].size
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    size = font_size or font_size_for(cell_w, cell_h)
    x_labels = list(x_labels or []) if any(x_labels or []) else []
    y_labels = list(y_labels or []) if any(y_labels or []) else []
    left = 0
    if y_labels:
        left = row_label_width or max(cell_w * 3 // 4, 48)
    column_labels = [render_label(text, cell_w, size) for text in x_labels[:cols]]
    row_labels = [render_label(text, left, size) for text in y_labels[:rows]]
    top = max((label.height for label in column_labels), default=0)
    layout = GridLayout(cell_w, cell_h, cols, rows, margin, left, top)
    grid = Image.new("RGB", layout.size, "white")
    for index, image in enumerate(images):
        x0, y0, _, _ = layout.cell_box(index % cols, index // cols)
        grid.paste(image.convert("RGB").resize((cell_w, cell_h)) if image.size != (cell_w, cell_h) else image.convert("RGB"),
                   (x0, y0))
    for col, label in enumerate(column_labels):
        x0, _, _, _ = layout.column_label_box(col)
        grid.paste(label, (x0, (top - label.height) // 2))
    for row, label in enumerate(row_labels):
        _, y0, _, y1 = layout.row_label_box(row)
        grid.paste(label, (0, y0 + max(0, (y1 - y0 - label.height) // 2)))
    return grid, layout
