"""Test-time registers (Jiang et al. 2025, "Vision Transformers Don't Need Trained Registers").

A ViT trained without registers writes huge vectors into a few patch tokens through a handful
of MLP hidden units (the "register neurons"). A test-time register is one extra, untrained token;
inside those units' blocks the units' activations are moved off the patches onto that token, and
the token is dropped before the features are used.

* :mod:`lostreg.ttreg.neurons`: the neuron file (JSON) tied to one model and its weights.
* :mod:`lostreg.ttreg.apply`: the forward intervention, a
  :class:`~lostreg.backbones.edits.ForwardEdit` the backbone runs through its generic seam;
  :func:`attach_test_time_registers` attaches one from a neuron file, refusing backbones that
  cannot take it (DINOv3, pixels) with a message naming those that can.
* :mod:`lostreg.ttreg.finder`: finding the neurons from unlabeled images (:func:`calibrate`).

Where a block's MLP hidden activation is read and edited is the backbone's business
(:mod:`lostreg.backbones.edits`); nothing in :mod:`lostreg.backbones` knows this package.

``lostreg calibrate`` (:mod:`lostreg.cli.calibrate_cmd`) writes a neuron file from image files.

Typical use::

    backbone = build_backbone("dinov2_vitl14")
    backbone = attach_test_time_registers(backbone, "dinov2_vitl14_neurons.json")  # refuses other weights
    keys = backbone.extract(images, "k", -1)                  # (B, rows*cols, D), register dropped

Published lists. The authors' 45-unit list for DINOv2 ViT-L/14 is NOT shipped: their repository
(github nickjiang2378/test-time-registers, HEAD 860df43) has no licence at its root; the only
licence file is Meta's Apache-2.0 text inside ``dinov2/``, the forked DINOv2 code, and the list
(``dinov2/dinov2/hub/register_neurons.py``, added by the authors) carries no licence statement of
its own, so redistributing it is not clearly permitted. Instead, find a list for your weights:
``lostreg calibrate --backbone dinov2_vitl14 --images DIR --output l14.json --threshold 150
--highest-layer 17 --top-k 45`` reproduces the paper's procedure (detection at block -2, outlier
norm > 150, layers <= 17) on your own ~100 images; the units need not match theirs one for one
(their own shipped score file does not reproduce their list either, spec A5). A list you obtained
yourself as ``{layer: [units]}`` becomes a file with ``RegisterNeurons.from_layer_units(backbone,
layers, note="source ...").save(path)`` (no weights hash: it then applies to any weights of that
architecture).
"""

from __future__ import annotations

import importlib
from typing import Any

from lostreg.ttreg.defaults import DEFAULT_DETECT_LAYER, DEFAULT_TOP_K

# Loaded on first use, so that importing the package (for the defaults) stays light.
_WHERE = {
    "MODES": "apply", "Mode": "apply", "TestTimeRegisters": "apply", "apply_test_time_registers": "apply",
    "attach_test_time_registers": "apply", "require_forward_edits": "apply",
    "NoOutliersError": "finder", "OutlierRule": "finder", "SparsityFilter": "finder",
    "UnitScores": "finder", "calibrate": "finder", "score_units": "finder",
    "ModelIdentity": "neurons", "NeuronFileError": "neurons", "RegisterNeurons": "neurons",
    "RegisterUnit": "neurons", "weights_sha256": "neurons",
}

__all__ = ["DEFAULT_DETECT_LAYER", "DEFAULT_TOP_K", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lostreg.ttreg.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lostreg.ttreg' has no attribute {name!r}")
