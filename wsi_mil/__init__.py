"""wsi_mil: learn to find disease in whole-slide images from slide-level labels."""

__version__ = "0.1.0"
