"""The artifact study of the registers paper, for any ViT: ``lostreg artifacts``.

"Vision Transformers Need Registers" (Darcet et al., ICLR 2024) shows why LOST broke on DINOv2 in
a sequence of measurements: the distribution of token norms along the layers, the same across
model sizes, the outliers' similarity to their neighbouring patches, and linear probes for the
local (position, pixels) and global (image class) information the outlier tokens carry. This
package runs them over a set of images, streaming, on any timm ViT lostreg supports, with trained
registers, test-time registers or none.

* :mod:`lostreg.study.sketch`: fixed-bin histograms and bottom-k samples (memory fixed in advance).
* :mod:`lostreg.study.tokens`: per-batch measurements (norms, the outlier rule, neighbour cosines).
* :mod:`lostreg.study.probes`: the linear probes (scikit-learn).
* :mod:`lostreg.study.run`: :class:`ArtifactStudy`, one backbone over a stream of batches.
* :mod:`lostreg.study.inputs`: images, labels and the fixed-size batches.
* :mod:`lostreg.study.figures`, :mod:`lostreg.study.summary`, :mod:`lostreg.study.output`: figures,
  tables (markdown, HTML) and the files written.

Typical use::

    study = ArtifactStudy(backbone, StudySettings(layer=-1))
    for batch in batches:                     # StudyBatch(images (B, 3, S, S), indices, labels)
        study.add(batch)
    record = study.result()                   # the artifacts.json record

The names below load their module on first use, so importing the package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ArtifactStudy": "run", "StudyBatch": "run", "StudySettings": "run", "is_test_image": "run",
    "ProbeSettings": "probes", "StudyImage": "inputs", "write_study": "output", "write_comparison": "output",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lostreg.study.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lostreg.study' has no attribute {name!r}")
