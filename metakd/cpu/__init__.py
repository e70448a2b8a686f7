"""metakd on CPU: numpy kernels for what OneFlow 0.9's CPU does slowly in a BERT step.

OneFlow 0.9's CPU kernels run on one thread and many are slow for BERT (GEMM at ~40% of
OpenBLAS's speed, last-axis broadcasts ~50x slow, batched matmuls, GELU, dropout masks, the
embedding gradient as a dense [V,H] scatter, the AdamW update); docs/design.md section 8 has the
measurements. This package runs that work in numpy through autograd Functions, with the
parameters (and their names) staying OneFlow's:

* ``kernels``   the numpy math, forward and backward (arrays in, arrays out);
* ``functions`` those kernels as OneFlow autograd Functions, the fused BertLayer included;
* ``modules``   numpy siblings of ``metakd.bert``'s modules; ``install(model)`` swaps them in;
* ``adamw``     the clip + AdamW update in numpy (``metakd.optim.make_update`` picks it);
* ``views``     reading tensors as arrays once per step (``numpy_scope``, ``parameter_views``);
* ``state``     the one switch (``set_kernels``: numpy or oneflow) and the one test (``active``).

The same functions to float rounding; ``--cpu-kernels oneflow`` (every entry point) runs OneFlow's
own kernels instead, the code that runs on CUDA.
"""
from metakd.cpu.modules import install, plain_class, uninstall
from metakd.cpu.state import KERNELS, active, current_kernels, set_kernels
from metakd.cpu.views import numpy_scope, parameter_views, sync

__all__ = ["KERNELS", "active", "current_kernels", "install", "numpy_scope", "parameter_views", "plain_class", "set_kernels", "sync",
           "uninstall"]
