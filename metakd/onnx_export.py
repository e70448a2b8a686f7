"""A classifier's logits as an ONNX graph, with OneFlow's own converter (oneflow-onnx 0.6.2).

Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 [batch, seq]) -> ``logits``
(float32 [batch, labels]). The shapes are fixed at export: oneflow-onnx bakes reshape targets,
ranges and slices into the graph and its only dynamic option renames one input's first axis, which
does not make the graph run at other shapes (measured: onnxruntime refuses another batch size or
length). Pad inputs to ``[batch, seq]`` (rows with an all-zero mask for a short batch) and drop the
extra rows' logits: ``run_padded`` does it.

What the export needs, each measured with OneFlow 0.9 / oneflow-onnx 0.6.2 / onnx 1.14.1:

* plain OneFlow ops: the CPU numpy Functions cannot be traced, so the model's numpy siblings are
  swapped back for the plain modules (``metakd.cpu.uninstall``; the same function to float
  rounding), with metakd's LayerNorm (OneFlow's own CPU LayerNorm converts to a ReduceSum without
  axes at opset 13);
* no unpadding (``flow.nonzero`` has a data-dependent shape): the graph calls the model with
  ``compat="easynlp", logits_only=True``, which keeps every position; [CLS]'s logits are the same;
* a converter bug: ``BackToBackOptimizer`` reads the first Transpose's permutation twice and so
  removes attention's ``K^T`` as if it were the identity (onnxruntime then refuses the file); the
  export runs without that pass;
* ``np.bool``, which oneflow-onnx still uses and numpy 1.24 removed;
* memory, for bert-base at 64 x 128 (which went past the machine's 24 GB): the graph is built, not
  run (a run first allocates every activation of the traced batch, ~1.2 GB per 768-wide layer), so
  the constants the forward captures are named here (``_free_eager_tensors``); and the converter's
  per-pass graph copies are collected after each pass. Measured peak for bert-base at 64 x 128:
  6.3 GB, in onnxsim (3.6 GB after the converter's passes).
"""
from __future__ import annotations

import contextlib
import gc
import io
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

from metakd.infra.errors import UserError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _import_converter():
    if "bool" not in vars(np):  # (hasattr would warn)
        np.bool = np.bool_  # oneflow-onnx 0.6.2 uses np.bool (removed in numpy 1.24)
    import warnings

    try:
        with warnings.catch_warnings():  # oneflow-onnx's own np.bool use
            warnings.simplefilter("ignore", FutureWarning)
            import onnx
            from oneflow_onnx.oneflow2onnx import optimizer
            from oneflow_onnx.oneflow2onnx.util import export_onnx_model
    except ImportError as e:
        raise UserError(f"ONNX export needs oneflow-onnx and onnx ({e}); run bash tools/setup_env.sh, which installs "
                        "the pinned versions of requirements.txt") from None
    return onnx, optimizer, export_onnx_model


def export_logits(model, path: Path, batch: int, seq: int, opset: int = 13) -> None:
    """Trace ``model`` (a MetaBert on CPU; it is changed for tracing: use a fresh copy) to ``path``."""
    from metakd import bert, cpu
    from metakd.runtime import _fd2_silenced, flow

    onnx, optimizer, export_onnx_model = _import_converter()

    class LogitsGraph(flow.nn.Graph):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def build(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids, attention_mask, token_type_ids, compat="easynlp", logits_only=True).logits

    saved_native = bert.LayerNorm.native_on_cpu
    bert.LayerNorm.native_on_cpu = False
    saved_passes = optimizer._optimizers.copy()
    optimizer._optimizers.clear()
    optimizer._optimizers.update((name, _collecting(factory)) for name, factory in saved_passes.items()
                                 if name != "remove_back_to_back")
    try:
        cpu.uninstall(model.eval())  # (nn.Graph's module proxies would also break the siblings' super())
        dummy = lambda n: [flow.ones(n, seq, dtype=flow.int64), flow.ones(n, seq, dtype=flow.int64),
                           flow.zeros(n, seq, dtype=flow.int64)]
        with flow.no_grad():  # eager once: LayerNorm makes its constants (one row: they do not depend on it)
            model(*dummy(1), compat="easynlp", logits_only=True)
        # Without a usable GPU, OneFlow's nn.Graph constructor asks the CUDA runtime for its version
        # and prints "Failed to get cuda runtime version" (a glog ERROR) straight to fd 2; harmless
        # on a CPU export, so it is not shown. With a GPU nothing is hidden.
        with contextlib.nullcontext() if flow.cuda.is_available() else _fd2_silenced():
            graph = LogitsGraph(model)
        # the job is all the converter reads; running the graph would first allocate every activation of
        # the traced batch (OneFlow's CPU plan: about 1.2 GB per 768-wide layer at 64 x 128)
        graph.build_graph(*dummy(batch))
        with tempfile.TemporaryDirectory() as weights:
            flow.save({**graph.state_dict(), **_free_eager_tensors(graph, model)}, weights)
            # (its progress lines name a temporary file that is gone when the export reports)
            with contextlib.redirect_stdout(io.StringIO()):
                export_onnx_model(graph, opset=opset, flow_weight_dir=weights, onnx_model_path=str(path))
    finally:
        bert.LayerNorm.native_on_cpu = saved_native
        optimizer._optimizers.clear()
        optimizer._optimizers.update(saved_passes)
    m = onnx.load(str(path))  # readable names instead of the graph's generated ones
    renames = {i.name: n for i, n in zip(m.graph.input, INPUTS)}
    renames[m.graph.output[0].name] = "logits"
    for v in list(m.graph.input) + list(m.graph.output):
        v.name = renames[v.name]
    for node in m.graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _collecting(factory):
    """An optimizer pass of the converter that frees the graph copies it leaves behind.

    The converter deep-copies the whole graph, weights included, before every pass, and the copies
    are reference cycles: without a collection after each pass they pile up (measured, 4 layers x
    768: 2.9 GB at the end of the passes instead of 1.9 GB; bert-base went past 24 GB with the rest).
    """
    class Collecting(factory):
        def Optimize(self, graph):
            try:
                return factory.Optimize(self, graph)
            finally:
                gc.collect()

    Collecting.__name__ = factory.__name__
    return Collecting


def _free_eager_tensors(graph, model) -> Dict[str, object]:
    """The eager tensors a module's forward captured (LayerNorm's constant vectors), by their variable names.

    A built but never run graph does not list them (OneFlow collects them only when it initialises
    the runtime) and the converter needs their values: each variable ``<scope>-FreeEagerTensor-<n>``
    is the tensor of that shape held in the module at ``<scope>`` outside its parameters and buffers.
    """
    modules = dict(model.named_modules())
    found = {}
    for op in graph._full_graph_proto.net.op:
        scope, sep, _ = op.name.partition("-FreeEagerTensor-")
        if not op.HasField("variable_conf") or not sep:
            continue
        module = modules.get(scope.split(".", 1)[1] if "." in scope else "")
        shape = tuple(op.variable_conf.shape.dim)
        owned = {id(t) for t in list(module.parameters()) + list(module.buffers())} if module is not None else set()
        held = [] if module is None else [t for v in vars(module).values()
                                          for t in (v if isinstance(v, (tuple, list)) else (v,))]
        match = [t for t in held if hasattr(t, "shape") and tuple(t.shape) == shape and id(t) not in owned]
        if len(match) != 1:
            raise UserError(f"ONNX export: the graph's constant {op.name} {list(shape)} matches {len(match)} tensors "
                            "held by its module, not one; make the constants the forward uses buffers of the module")
        found[op.name] = match[0]
    return found


def run_padded(session, enc: Dict[str, np.ndarray]) -> np.ndarray:
    """Logits of encoded rows (any count, at most the exported length) through a fixed-shape graph."""
    batch, seq = session.get_inputs()[0].shape
    n, width = enc["input_ids"].shape
    used = int(enc["attention_mask"].sum(axis=1).max())
    if used > seq:
        raise UserError(f"a row has {used} tokens but the graph was exported for {seq}; export it with a larger --seq")
    out: List[np.ndarray] = []
    for lo in range(0, n, batch):
        feeds = {k: np.zeros((batch, seq), np.int64) for k in INPUTS}
        rows = min(batch, n - lo)
        for k in INPUTS:
            feeds[k][:rows, :min(width, seq)] = enc[k][lo:lo + rows, :seq]
        out.append(session.run(["logits"], feeds)[0][:rows])
    return np.concatenate(out)
