"""lostreg: unsupervised object discovery (LOST) with register-aware Vision Transformers.

Data flow, one module per stage (imports only flow down it):
image file -> :mod:`lostreg.io.images` (decode, EXIF, RGB uint8)
-> :mod:`lostreg.preprocess` (normalise, pad to the patch grid)
-> :mod:`lostreg.backbones` (patch features q/k/v of chosen layers)
-> :mod:`lostreg.lost` (seed, mask, box in patch units), as :mod:`lostreg.protocol` says
-> :mod:`lostreg.boxes` (pixel boxes of the original image), tied together by :mod:`lostreg.discovery`
-> :mod:`lostreg.evaluation` (the eval loop, evaluators), which writes run directories through
:mod:`lostreg.rundir` -> :mod:`lostreg.export`, :mod:`lostreg.report`, :mod:`lostreg.cli`.
"""

__version__ = "0.1.0"
