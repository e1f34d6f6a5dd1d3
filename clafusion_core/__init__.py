"""CLAFusion Explorer core: cross-layer alignment and optimal-transport fusion of neural networks.

The library never imports streamlit; the app (``app.py``, ``app_pages/``, ``app_support/``) and the CLI
(``python -m clafusion_core``) are thin layers over :mod:`clafusion_core.pipeline`.
"""

from .errors import AlignmentError, ArchError, CheckpointError, DatasetError, DeviceError, FusionError

__all__ = ["FusionError", "ArchError", "CheckpointError", "DatasetError", "AlignmentError", "DeviceError"]
__version__ = "0.1.0"
