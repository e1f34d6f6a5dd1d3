import pytest

from clafusion_core import errors


@pytest.mark.parametrize("cls", [errors.ArchError, errors.CheckpointError, errors.DatasetError,
                                 errors.AlignmentError, errors.DeviceError])
def test_user_errors_are_fusion_errors(cls):
    with pytest.raises(errors.FusionError, match="do this"):
        raise cls("do this")
