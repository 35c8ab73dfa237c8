"""Inference: the one network every consumer uses, and the DICOM/NIfTI batch tools around it."""

from bundle.inference.batch import BatchError, BatchResult, load_enhancer, run_batch
from bundle.inference.enhancer import CTEnhancer, Enhancement

__all__ = ["BatchError", "BatchResult", "CTEnhancer", "Enhancement", "load_enhancer", "run_batch"]
