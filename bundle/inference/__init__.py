"""Inference: the one network every consumer uses, and the DICOM/NIfTI batch tools around it."""

from bundle.inference.batch import BatchError, BatchResult, find_inputs, load_enhancer, run_batch
from bundle.inference.enhancer import CTEnhancer, Enhancement

__all__ = ["BatchError", "BatchResult", "CTEnhancer", "Enhancement", "find_inputs", "load_enhancer", "run_batch"]
