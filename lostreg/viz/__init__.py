"""Pictures: boxes and seeds drawn on images (diagnostic figures: lostreg.diagnostics.figures)."""
