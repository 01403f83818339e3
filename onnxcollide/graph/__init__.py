"""The graph stage: load an ONNX file, resolve constant weights, find linear ops and input paths.

Only this package imports ``onnx`` for parsing.
"""
