"""`python -m onnxcollide`: the command line."""

from onnxcollide.cli.entry import run

if __name__ == "__main__":
    run()
