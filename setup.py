"""tvm-autodiff: reverse-mode automatic differentiation of TVM tensor expressions."""
from setuptools import setup

setup(
    name="tvm-autodiff",
    version="0.1.0",
    description="Differentiate TVM tensor expressions (te.compute / topi) into fast gradient kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["tvm_autodiff", "tvm_autodiff.ir", "tvm_autodiff.frontend", "tvm_autodiff.passes",
              "tvm_autodiff.tir", "tvm_autodiff.schedule", "tvm_autodiff.relax"],
    # The zero-elimination passes live in a top-level folder of their own (they work on any TE
    # tensor, not only on gradients) but are installed as a subpackage.
    package_dir={"tvm_autodiff": "tvm_autodiff", "tvm_autodiff.passes": "passes"},
    install_requires=[
        "apache-tvm==0.27.0.post1",
        # 0.1.15.post2 segfaults in tvm.ir.save_json and in meta_schedule.
        "apache-tvm-ffi==0.1.14.post0",
        "islpy",
        "numpy",
        # meta_schedule's builder and runner pools (apache-tvm's popen-pool extra).
        "psutil",
        "cloudpickle",
    ],
    extras_require={
        # The tutorials run (in a fast mode) as part of the tests, so their dependencies are here too.
        "test": ["pytest", "hypothesis", "scikit-learn", "matplotlib", "tqdm", "torch==2.13.0"],
        "bench": ["torch==2.13.0", "matplotlib", "tqdm"],
        "tutorials": ["scikit-learn", "matplotlib", "tqdm"],
    },
)
