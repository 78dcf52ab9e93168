"""lostreg: unsupervised object discovery (LOST) with register-aware Vision Transformers.

Data flow, one module per stage:
image file -> :mod:`lostreg.io.images` (decode, EXIF, RGB uint8)
-> :mod:`lostreg.preprocess` (normalise, pad to the patch grid)
-> :mod:`lostreg.backbones` (patch features q/k/v of one layer)
-> :mod:`lostreg.lost` (seed, mask, box in patch units)
-> :mod:`lostreg.boxes` (pixel boxes of the original image) -> JSON / pictures / evaluation.
"""

__version__ = "0.1.0"
