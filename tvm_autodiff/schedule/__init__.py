"""Default schedules for arbitrary (gradient) PrimFuncs, as rules (docs: README, "Schedules").

TVM 0.27 has no default schedule for arbitrary TE: an unscheduled PrimFunc runs as serial scalar
loops, and on CUDA it compiles into a host loop with no kernel.  Gradient graphs mix every kind of
block (injective, reductions over many axes, selects, the window reductions of conv gradients), so
each block gets the first rule that applies to it (`rule.py`), and the choice is recorded.

Modules: target (targets and the hardware model), analysis (block facts), rule (protocol and
driver), inline, cpu_matmul and cpu_rows (CPU rules), cpu (the CPU driver), gpu (GPU rules).
"""
from .analysis import BlockInfo, block_infos
from .cpu import CPU_RULES, schedule_cpu
from .gpu import gpu_limits_ok, schedule_gpu
from .rule import Choice, Decline, Scheduled, ScheduleRule
from .target import CpuConfig, GpuConfig, cpu_target, cuda_arch, host_cores, use_all_cores

__all__ = ["BlockInfo", "CPU_RULES", "Choice", "CpuConfig", "Decline", "GpuConfig", "ScheduleRule",
           "Scheduled", "block_infos", "cpu_target", "cuda_arch", "gpu_limits_ok", "host_cores",
           "schedule_cpu", "schedule_gpu", "use_all_cores"]
