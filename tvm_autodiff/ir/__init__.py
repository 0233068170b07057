"""The IR layer: walking and rebuilding TE graphs (`graph`), expression helpers (`expr`) and
reduction helpers (`reductions`).

A leaf of the package: it imports nothing else from tvm_autodiff but `tvm_autodiff.errors`.  The
front end (`tvm_autodiff.frontend`), the passes (`tvm_autodiff.passes`) and the analysis tools
(`counting`, `printing`) build on it.
"""
