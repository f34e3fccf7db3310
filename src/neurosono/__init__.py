"""neurosono: two-stage fetal neurosonography screening on TV/TC planes."""

__version__ = "0.1.0"
