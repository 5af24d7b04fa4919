"""Image grids and PNG files for reconstructions and latent traversals."""

from __future__ import annotations

from typing import Sequence

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageDraw

_PAD = 2
_BORDER_VALUE = 0.5


def image_grid(images: np.ndarray, num_columns: int) -> np.ndarray:
  """Tiles [N, H, W, C] images in [0, 1] into one [rows*H', cols*W', C] image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  num, height, width, channels = images.shape
  num_rows = -(-num // num_columns)
  cell_h, cell_w = height + _PAD, width + _PAD
  grid = np.full(
      (num_rows * cell_h + _PAD, num_columns * cell_w + _PAD, channels),
      _BORDER_VALUE,
      np.float32,
  )
  for i, image in enumerate(images):
    row, col = divmod(i, num_columns)
    top, left = _PAD + row * cell_h, _PAD + col * cell_w
    grid[top : top + height, left : left + width] = image
  return grid


def label_rows(grid: np.ndarray, labels: Sequence[str], row_height: int) -> np.ndarray:
  """Prepends a text column to `grid` with one label per row of cells."""
  label_width = 8 * max(len(label) for label in labels) + 6
  canvas = Image.new("L", (label_width, grid.shape[0]), 0)
  draw = ImageDraw.Draw(canvas)
  for i, label in enumerate(labels):
    draw.text((3, _PAD + i * row_height + row_height // 2 - 6), label, fill=255)
  text = np.asarray(canvas, np.float32)[..., None] / 255.0
  text = np.repeat(text, grid.shape[-1], axis=-1)
  return np.concatenate([text, grid], axis=1)


def save_png(path: epath.PathLike, image: np.ndarray) -> None:
  """Writes an [H, W, C] (C in {1, 3}) image in [0, 1] as an 8-bit PNG."""
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  pixels = np.round(image * 255).astype(np.uint8)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  path = epath.Path(path)
  with path.open("wb") as f:
    Image.fromarray(pixels).save(f, format="PNG")


def reconstruction_grid(inputs: np.ndarray, reconstructions: np.ndarray,
                        num_columns: int = 8) -> np.ndarray:
  """Alternating rows of inputs and their reconstructions."""
  rows = []
  for start in range(0, len(inputs), num_columns):
    rows.append(inputs[start : start + num_columns])
    rows.append(reconstructions[start : start + num_columns])
  return image_grid(np.concatenate(rows), num_columns)


def traversal_grid(traversals: np.ndarray, labels: Sequence[str]) -> np.ndarray:
  """[K, steps, H, W, C] decoded traversals -> labelled grid, one row per latent."""
  num_latents, steps, height = traversals.shape[:3]
  grid = image_grid(traversals.reshape(num_latents * steps, *traversals.shape[2:]), steps)
  return label_rows(grid, labels, height + _PAD)
