"""Errors a user can cause.

Every error that bad input can trigger (a corrupt checkpoint, a missing dataset root, an unknown arch
spec, a stage-count mismatch, ...) is a :class:`FusionError` whose message is one sentence saying what
to do. The app shows it with ``st.error`` and the CLI prints it and exits with status 2; neither shows
a traceback for these.
"""


class FusionError(Exception):
    """Base class of all user-facing errors: the message tells the user what to do."""


class ArchError(FusionError):
    """An arch spec string or a state_dict that no supported architecture matches."""


class CheckpointError(FusionError):
    """A checkpoint file that cannot be read, or whose contents do not fit the model or dataset."""


class DatasetError(FusionError):
    """A dataset that is unknown or whose files are missing from the local root."""


class AlignmentError(FusionError):
    """Two models (or a user-given matching) that cannot be aligned layer to layer."""


class DeviceError(FusionError):
    """A device that was asked for but is not available (e.g. CUDA on a machine without a GPU)."""


class NumericalError(FusionError):
    """A computation that came out with NaN or infinite values (e.g. a fused model that overflowed)."""


class OutputError(FusionError):
    """An output path (``--out``, ``--json``) that cannot be written."""
