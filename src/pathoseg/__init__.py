"""pathoseg: human-in-the-loop gland segmentation for H&E colon histology."""

from pathoseg.errors import PathosegError

__version__ = "0.1.0"
__all__ = ["PathosegError", "__version__"]
