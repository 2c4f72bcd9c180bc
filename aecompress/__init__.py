"""aecompress: compress and denoise images with autoencoders."""

__version__ = "0.1.0"
