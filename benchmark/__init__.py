"""MeDiBench: augmentation strategies against shortcut learning in computational pathology."""

__version__ = "0.1.0"
