"""Inference: the one network every consumer uses, and the DICOM/NIfTI batch tools around it."""

from bundle.inference.enhancer import CTEnhancer, Enhancement

__all__ = ["CTEnhancer", "Enhancement"]
