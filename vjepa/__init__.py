"""vjepa: video-first joint-embedding predictive architectures (SALT, V-JEPA, TC-JEPA)."""
__version__ = "0.1.0"
