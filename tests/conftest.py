"""pytest setup: make tests/gradcheck.py and tests/op_table.py importable and keep TVM's printer
quiet."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tvm  # noqa: E402

# str() of a TE body otherwise logs a warning per tensor read (docs/tvm-0.27.md, "printer warns
# per tensor read").
try:
    tvm.ir.register_op_attr("te.tensor_load", "TScriptPrinterName", "tensor_load")
except Exception:  # already registered (e.g. by the package)
    pass
