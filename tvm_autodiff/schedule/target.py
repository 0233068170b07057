"""Targets and the hardware model that every schedule rule reads.

`CpuConfig.of(target)` and `GpuConfig.of(target)` turn a target into the few numbers the rules
need (vector width, cores, thread limits), so no rule carries a hardware literal of its own.
Cache sizes are constants here, each with the measurement that chose it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import tvm

# Widest machine vector the register-tile model uses.  The tiles (`_matmul_tile`, dot tiles) were
# chosen and measured with 256-bit vectors and 16 vector registers (AVX2); on AVX-512 targets
# they still use 256-bit vectors (this project's benchmark CPU, a znver5, has AVX-512), which
# keeps the measured tiles, except the matmul tile over columns that the widest vector divides
# (`CpuConfig.wide_lanes`).  See README, "Schedules".
MAX_VECTOR_BYTES = 32
# L1 data cache assumed by the matmul panel-packing test: a B panel larger than this is copied
# contiguously.  Chosen on the 1000x2000x1000 GEMM (62 -> 41 ms with packing).
L1_BYTES = 32 * 1024
# Share of the L2 cache that a dot tile's block of columns may take: the column operand's rows of
# one block stay there while every row tile streams past them (a 2048x256 by 2000x256 dense layer
# otherwise reads all 2 MB of its weights once per row tile).
L2_BLOCK_BYTES = 256 * 1024
# Vector registers the register tiles may fill with accumulators: the rest hold the broadcast
# operand and the loaded B vectors.  AVX2 has 16 vector registers (12 accumulators); AVX-512 has
# 32, for 256-bit vectors too (AVX-512VL), and 24 accumulators let the tiles grow: on this
# project's znver5, dense-layer weight gradients at GPT sizes (2048 rows; 256 wide by 1024, 256 by
# 2000) 20 -> 8 ms and 24 -> 19 ms, the input gradient of a 1024-wide layer 14 -> 7 ms.
ACCUMULATOR_SHARE = 3 / 4
# Blocks of fewer iterations than this run serially: starting and joining the thread pool for a
# parallel loop costs about 3 µs on the 2-core development machine (an unrolled LSTM with batch 4
# and hidden 8 ran its 238 parallel loops in 0.72 ms, and in 0.03 ms with TVM_NUM_THREADS=1),
# which is what 8,192 iterations of a vectorized elementwise body take, so below this the
# threads cost more than they save.
MIN_PARALLEL_VOLUME = 8192
# Threads per block that the project's own GPU rule binds (dlight picks its own).
GPU_THREADS = 256


def host_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_all_cores() -> None:
    """Give TVM's CPU thread pool one thread per core this process may use (unless the user set
    TVM_NUM_THREADS).  TVM's default halves the logical CPU count on x86 to skip hyper-threads
    (docs/tvm-0.27.md, "thread pool halves the cores"), which on a VM with one thread per core
    leaves every parallel loop on one core.  The pool reads the variable when it starts, at the
    first parallel kernel, so `build` calls this before it compiles anything."""
    import psutil
    physical = psutil.cpu_count(logical=False) or host_cores()
    os.environ.setdefault("TVM_NUM_THREADS", str(max(1, min(host_cores(), physical))))


def cpu_target(num_cores: Optional[int] = None, **attrs) -> tvm.target.Target:
    """llvm target for this host: the real CPU name (docs/tvm-0.27.md, "mcpu=native is not
    resolved") and `num-cores`, which meta_schedule requires and the parallel runtime uses."""
    mcpu = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")()
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": num_cores or host_cores(),
                              **attrs})


def cuda_arch() -> str:
    """The arch of CUDA device 0, or sm_80 when there is no GPU."""
    dev = tvm.cuda(0)
    return "sm_" + dev.compute_version.replace(".", "") if dev.exist else "sm_80"


# Machine vector bytes by target feature, widest first.  (LLVM's own vector-width query answers
# for the host, not for the target's mcpu.)
_VECTOR_FEATURES = (("avx512f", 64), ("avx", 32), ("sse2", 16), ("neon", 16))
# Vector registers: 32 with AVX-512 (and on AArch64), 16 on other x86 targets.
_REGISTER_FEATURES = (("avx512f", 32), ("neon", 32))


def _bits(dtype) -> int:
    return tvm.runtime.DataType(str(dtype)).bits


@dataclass(frozen=True)
class CpuConfig:
    """What the CPU rules know of the target.

    cores: parallel threads (the target's num-cores).  vector_bytes: one machine vector, from the
    target's features (`_VECTOR_FEATURES`), at most MAX_VECTOR_BYTES.  max_accumulators: the
    vector registers (`_REGISTER_FEATURES`) times ACCUMULATOR_SHARE.  vectorize: False builds
    scalar loops (the fallback when LLVM has no vector form of an intrinsic, docs/tvm-0.27.md, "no
    vector form of some intrinsics")."""
    cores: int
    vector_bytes: int
    vectorize: bool = True
    l1_bytes: int = L1_BYTES
    l2_block_bytes: int = L2_BLOCK_BYTES
    max_accumulators: int = int(16 * ACCUMULATOR_SHARE)
    machine_vector_bytes: int = 0   # the target's own widest vector (vector_bytes is capped)

    @staticmethod
    def of(target: tvm.target.Target, vectorize: bool = True) -> "CpuConfig":
        def feature(table, default):
            return next((v for f, v in table if tvm.target.codegen.target_has_features(f, target)), default)
        cores = int(target.attrs.get("num-cores", host_cores()))
        widest = feature(_VECTOR_FEATURES, 16)
        return CpuConfig(cores, min(widest, MAX_VECTOR_BYTES), vectorize,
                         max_accumulators=int(feature(_REGISTER_FEATURES, 16) * ACCUMULATOR_SHARE),
                         machine_vector_bytes=widest)

    def parallel_pays(self, info) -> bool:
        """Whether block `info` is worth a parallel loop: several cores, and at least
        MIN_PARALLEL_VOLUME iterations (or a symbolic count, which may be large)."""
        volume = info.volume()
        return self.cores > 1 and (volume is None or volume >= MIN_PARALLEL_VOLUME)

    def lanes(self, dtype) -> int:
        """Elements of `dtype` in one machine vector (0 when vectorization is off)."""
        return max(1, self.vector_bytes * 8 // _bits(dtype)) if self.vectorize else 0

    def wide_lanes(self, dtype) -> int:
        """Elements of `dtype` in the target's widest vector, past MAX_VECTOR_BYTES (0 when
        vectorization is off): the matmul tile's lanes where they divide its columns."""
        return max(self.lanes(dtype), self.machine_vector_bytes * 8 // _bits(dtype)) if self.vectorize else 0

    def row_lanes(self, dtype) -> int:
        """Widest vector loop of the row rules: two machine vectors, which LLVM splits into two
        operations (16 float32 lanes on 256-bit targets; it keeps two independent accumulators
        per loop)."""
        return 2 * self.lanes(dtype)


@dataclass(frozen=True)
class GpuConfig:
    """What the GPU rules know of the target: threads per block for the project's own binding
    rule, and the target's limit."""
    threads: int
    max_threads: int

    @staticmethod
    def of(target: tvm.target.Target) -> "GpuConfig":
        limit = int(target.attrs.get("max_num_threads", 1024))
        return GpuConfig(min(GPU_THREADS, limit), limit)
