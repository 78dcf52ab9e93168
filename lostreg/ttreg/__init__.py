"""Test-time registers (Jiang et al. 2025, "Vision Transformers Don't Need Trained Registers").

A ViT trained without registers writes huge vectors into a few patch tokens through a handful
of MLP hidden units (the "register neurons"). A test-time register is one extra, untrained token;
inside those units' blocks the units' activations are moved off the patches onto that token, and
the token is dropped before the features are used.

* :mod:`lostreg.ttreg.neurons`: the neuron file (JSON) tied to one model and its weights.
* :mod:`lostreg.ttreg.apply`: the forward intervention, an explicit state of
  :class:`~lostreg.backbones.vit.TimmViTBackbone` (:func:`apply_test_time_registers`).
* :mod:`lostreg.ttreg.calibrate`: finding the neurons from unlabeled images (:func:`calibrate`).
* :mod:`lostreg.ttreg.hidden`: where the MLP hidden activation is read and edited in timm blocks.

``lostreg calibrate`` (:mod:`lostreg.cli.calibrate_cmd`) writes a neuron file from image files.

Typical use::

    backbone = build_backbone("dinov2_vitl14")
    neurons = RegisterNeurons.load("dinov2_vitl14_neurons.json")
    backbone = apply_test_time_registers(backbone, neurons)   # refuses a file for other weights
    keys = backbone.extract(images, "k", -1)                  # (B, rows*cols, D), register dropped
"""

from lostreg.ttreg.apply import (
    MODES,
    Mode,
    TestTimeRegisters,
    apply_test_time_registers,
)
from lostreg.ttreg.calibrate import (
    DEFAULT_DETECT_LAYER,
    DEFAULT_TOP_K,
    NoOutliersError,
    OutlierRule,
    SparsityFilter,
    UnitScores,
    calibrate,
    score_units,
)
from lostreg.ttreg.neurons import (
    ModelIdentity,
    NeuronFileError,
    RegisterNeurons,
    RegisterUnit,
    weights_sha256,
)

__all__ = [
    "DEFAULT_DETECT_LAYER",
    "DEFAULT_TOP_K",
    "MODES",
    "Mode",
    "ModelIdentity",
    "NeuronFileError",
    "NoOutliersError",
    "OutlierRule",
    "RegisterNeurons",
    "RegisterUnit",
    "SparsityFilter",
    "TestTimeRegisters",
    "UnitScores",
    "apply_test_time_registers",
    "calibrate",
    "score_units",
    "weights_sha256",
]
