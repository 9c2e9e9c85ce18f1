"""Opening image files: RGB, bounded in size, and every failure named with the file and the row that uses it."""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from comalite.errors import DataFormatError

MAX_IMAGE_PIXELS = 8192 * 8192
"""Larger images are refused before decoding: memory and time stay bounded (the processor would shrink
them to ``model.max_pixels`` anyway)."""

MAX_ASPECT_RATIO = 200
"""Longer side over shorter side: Qwen2-VL's image processor refuses a ratio above 200 (a 1x5000 strip)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File endings read as images when a folder is searched for them."""


def find_images(folder: str | Path) -> list[Path]:
    """The image files under the existing folder ``folder`` (recursively, by ``IMAGE_SUFFIXES``; hidden files
    and folders such as a hub client's ``.cache`` skipped), sorted by their path."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def load_image(path, origin: str = "") -> Image.Image:
    """Open an image file as RGB; an unreadable, missing, oversized or too elongated (``MAX_ASPECT_RATIO``) file
    raises DataFormatError naming it and, given its ``origin`` (``EmbedInput.origin``, ``Dialogue.origin``), the
    file and row that use it."""
    used_by = f" (used by {origin})" if origin else ""
    fix = "or drop the rows that use it."
    try:
        with warnings.catch_warnings():  # PIL warns of sizes the check below refuses anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataFormatError(f"{path}{used_by}: {image.width}x{image.height} pixels, over the "
                                      f"{MAX_IMAGE_PIXELS:,} comalite decodes. Shrink the image, {fix}")
            short, long = sorted((image.width, image.height))
            if short < 1 or long / short > MAX_ASPECT_RATIO:
                ratio = f"{long / short:,.0f}:1" if short else "no area"
                raise DataFormatError(f"{path}{used_by}: {image.width}x{image.height} pixels, an aspect ratio of "
                                      f"{ratio}, over the {MAX_ASPECT_RATIO}:1 Qwen2-VL's image processor takes. Crop "
                                      f"or pad the image, {fix}")
            return image.convert("RGB")
    except Image.DecompressionBombError as e:  # PIL's own limit (above ours), hit while reading the header
        raise DataFormatError(f"{path}{used_by}: over the {MAX_IMAGE_PIXELS:,} pixels comalite decodes ({e}). "
                              f"Shrink the image, {fix}") from None
    except (OSError, ValueError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}{used_by}: cannot read this image ({e}). Re-extract or re-download it, "
                              f"{fix}") from e
