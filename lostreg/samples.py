"""Real photographs shipped with scikit-image, for a first run without images of one's own."""

from __future__ import annotations

from typing import Callable

import numpy as np


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]  # left view of the stereo pair


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


#: name -> loader returning (H, W, 3) uint8 RGB. All ship inside scikit-image (no download).
SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
}


def load_sample(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a named sample."""
    image = SAMPLES[name]()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample {name!r} is not an RGB uint8 image")
    return image
