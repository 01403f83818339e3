"""`python -m onnxcollide`: the command line."""

from onnxcollide.cli import main

main()
