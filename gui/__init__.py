"""The aecompress desktop app (PySide6): drop photos to compress, decompress or denoise them.

A thin layer over the same runtime functions the command line uses (aecompress.compress,
aecompress.denoise, aecompress.batch); all model work runs off the UI thread (gui.workers).
"""
