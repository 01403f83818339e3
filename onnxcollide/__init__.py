"""onnxcollide: audit ONNX models for exact feature collisions (Ozbulak et al.)."""

__version__ = "0.1.0"
