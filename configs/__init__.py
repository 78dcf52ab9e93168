"""Hydra configs of lostreg, installed as the package ``lostreg.configs``."""
