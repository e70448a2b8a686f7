"""Device choice and process layout outside the launcher."""
import os

import pytest

from metakd.infra.errors import UserError
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


def test_tf32_is_off_unless_asked_for():
    """OneFlow reads ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION when it makes a CUDA stream: metakd sets it
    at import, off by default (CUDA then computes what the CPU does), on with METAKD_TF32=1."""
    import subprocess
    import sys

    from conftest import ROOT

    code = "import os, metakd.runtime as r; print(r.TF32, os.environ['ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION'])"
    for value, want in ((None, "False 0"), ("1", "True 1"), ("0", "False 0")):
        env = {k: v for k, v in os.environ.items() if k not in ("METAKD_TF32", "ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION")}
        if value is not None:
            env["METAKD_TF32"] = value
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1]
        assert out == want
