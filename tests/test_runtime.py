"""Device choice and process layout outside the launcher."""
import os

import pytest

from metakd.errors import UserError
from metakd.runtime import cuda_available, flow, local_rank, rank, resolve_device, world_size


def test_devices():
    assert resolve_device("cpu") == flow.device("cpu")
    assert resolve_device(str(flow.device("cpu"))) == flow.device("cpu")  # "cpu:0" round-trips
    assert resolve_device("auto").type == ("cuda" if cuda_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")
    if not cuda_available():
        with pytest.raises(UserError, match="no usable GPU"):
            resolve_device("cuda")


def test_single_process_layout():
    # Importing OneFlow outside the launcher sets RANK=-1; metakd must still say rank 0 of 1.
    assert (rank(), world_size(), local_rank()) == (0, 1, 0)
    assert os.environ.get("RANK") in (None, "-1", "0")
