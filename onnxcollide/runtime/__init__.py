"""ONNX Runtime: sessions on the CPU or CUDA provider (``session``), the comparison of two runs
against a random baseline (``validate``), and the validation of colliding inputs
(``collisions``). The only package that imports ``onnxruntime``, and only on first use.
"""
