"""The rank engine: numerical rank, nullity, singular-value facts and kernel bases of weight
blocks (``spectral``, with ``krylov`` and ``inertia``), and the smallest singular values of a
whole conv operator (``conv_operator``). Pure numpy/scipy: nothing here knows ONNX.
"""
