"""Run under ``python -m oneflow.distributed.launch --nproc_per_node 2``: EasyNLP's AdamW with two
processes skips a parameter no process gave a gradient (as with one), and updates one that only
some process did. Prints one JSON line per rank."""
import sys

import numpy as np

from metakd.cpu.adamw import NumpyUpdate
from metakd.optim import FlowUpdate
from metakd.runtime import broadcast_parameters, flow, rank
from emit import emit  # noqa: E402  (tests/helpers/ is this script's folder)

kind = sys.argv[1]
flow.manual_seed(0)
model = flow.nn.Sequential(flow.nn.Linear(3, 2), flow.nn.Linear(2, 1))
broadcast_parameters(model)
before = [p.numpy().copy() for p in model.parameters()]
cls = NumpyUpdate if kind == "numpy" else FlowUpdate
up = cls(model, lr=0.1, weight_decay=0.5, total_steps=4, warmup_proportion=0.0, variant="huggingface")
first, second = model[0], model[1]
# rank 0: a gradient for the first layer's weight only; rank 1: for nothing. The second layer gets none.
if rank() == 0:
    first.weight.grad = flow.full((2, 3), 0.01)
up.gradients()
up.apply()
after = [p.numpy() for p in model.parameters()]
moved = [bool(np.abs(a - b).max() > 0) for a, b in zip(after, before)]
steps = list(up.param_steps) if kind == "numpy" else list(up.hf.t)
emit({"rank": rank(), "moved": moved, "steps": steps})
