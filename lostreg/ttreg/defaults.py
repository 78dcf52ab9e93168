"""Defaults of the register-neuron calibration (no imports: the CLI's --help reads them)."""

#: The registers paper's default for DINOv2 (detect at block -2).
DEFAULT_DETECT_LAYER = -2
#: The released DINOv2-L configuration keeps 50 (its published list has 45).
DEFAULT_TOP_K = 50
