"""labkit: a workbook for handwritten digit recognition with a CNN on MNIST."""
__version__ = "0.1.0"
