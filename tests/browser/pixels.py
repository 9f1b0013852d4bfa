"""Pixel checks on screenshots: not blank, and which TP/FP/FN overlay colours of `pneumokit.viz.PALETTE` they show."""
from __future__ import annotations
import inspect, io

import numpy as np
from PIL import Image


def as_rgb(png: bytes | Image.Image) -> np.ndarray:
    "A screenshot as an (H, W, 3) int array."
    im = png if isinstance(png, Image.Image) else Image.open(io.BytesIO(png))
    return np.asarray(im.convert('RGB')).astype(np.int32)


def grey_std(png) -> float:
    "Standard deviation of the grey values: about 0 for a blank (one-colour) image."
    return float(as_rgb(png).mean(-1).std())


def overlay_alpha() -> float:
    "The colour weight the gallery and the explorer draw with (`plot_overlays`' default)."
    from pneumokit.viz import plot_overlays
    return float(inspect.signature(plot_overlays).parameters['alpha'].default)


def palette_counts(png, tol: float = 3.0) -> dict[str, int]:
    """Pixels of each overlay class (`tp`, `fp`, `fn`): `(1-alpha)*grey + alpha*PALETTE[c]` has the channel differences
    `alpha*(R-G, G-B)` of the class colour whatever the grey, so anti-aliased edges (a fraction of that), the legend's
    pure swatches (the full difference) and grey pixels (none) do not count."""
    from pneumokit.viz import PALETTE
    a, alpha = as_rgb(png), overlay_alpha()
    d = np.stack([a[..., 0] - a[..., 1], a[..., 1] - a[..., 2]], -1)
    out = {}
    for name, (r, g, b) in PALETTE.items():
        target = alpha * np.array([r - g, g - b], dtype=float)
        out[name] = int((np.abs(d - target) <= tol).all(-1).sum())
    return out
