"""metakd: Meta-KD in OneFlow.

The package's layout (docs/layout.md): the ``python -m metakd.<entry>`` modules at the top level,
the library below them in layers, :mod:`metakd.infra` at the bottom. Importing the package installs
the Ctrl-C guard of :mod:`metakd.infra.entry` first, before any module can load OneFlow.
"""
from metakd.infra import entry as _entry

_entry.guard_start()
