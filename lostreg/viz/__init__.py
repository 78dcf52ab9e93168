"""Pictures: boxes and seeds drawn on images (diagnostic figures come later)."""
