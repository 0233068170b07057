"""Compile gradient kernels here, run and time them on a GPU machine that has no TVM (issue 12).

The GPU machine has Python 3.12, PyTorch (CUDA) and nvcc but no TVM and no package registry, and
at most 64 MiB travels with a command, so the work is split in two halves:

    python benchmarks/gpu_check.py build --bundle DIR [--quick] [--device cuda|cpu]
        (here) builds every op-table gradient (tests/op_table.py), the benchmark gradients with a
        torch twin and the LeNet step (benchmarks/ops.py), and the training steps of the model
        benchmark (benchmarks/models_defs.py: loss and every weight gradient, built per kernel as
        a Relax VM executable) for {"kind": "cuda", "arch": "sm_90"}, exports each module,
        compiles its CUDA C to a fatbin with nvcc, saves the inputs and the results of the same
        graph built for llvm (.npz), and packs the runtime: TVM's runtime libraries and wheels of
        tvm_ffi (and typing_extensions, its one dependency).  `--groups op bench model` selects
        (all three together exceed the 64 MiB a device command carries at full size: build
        and run them in two parts, e.g. `--groups op bench` and `--groups model`).
    python DIR/gpu_check.py run --bundle DIR --out OUT [--device cuda|cpu]
        (there) pip-installs the wheels into a temporary folder with no index, loads every module
        with the TVM runtime only (tvm_ffi + libtvm_runtime*.so; the apache-tvm Python package is
        never imported; a per-kernel module through the Relax VM that libtvm_runtime contains),
        runs it on torch CUDA tensors through DLPack, compares with the CPU results and, for
        cases with a torch twin, with torch CUDA autograd (the models' twins: models_torch.py,
        carried in the bundle), times it against torch forward+backward with CUDA events, and
        writes results.json and results.md to OUT.
    python benchmarks/gpu_check.py --local [--quick] --out OUT
        both halves on one machine with a full apache-tvm install and a GPU.

Why the fatbins travel beside the modules: TVM 0.27 keeps a CUDA module's kernels as CUDA C and
compiles them only when the module is loaded on a GPU, through the global function
`tvm_callback_cuda_compile` (defined by the apache-tvm Python package, with NVRTC from
cuda-bindings by default), and its CUDA module can neither be written to a file nor be created
from a fatbin without a GPU driver.  So the export keeps the source, nvcc compiles it here, and
the run half registers its own `tvm_callback_cuda_compile`, which returns the fatbin that nvcc
made from that very source (looked up by its SHA-256).

`--device cpu` builds llvm modules and runs them the same way on numpy arrays; tests/
test_gpu_check.py uses it to run the run half in a clean venv with nothing but the bundle (and a
numpy wheel) installed.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WHEEL_CACHE = os.path.join(HERE, "gpu_check", "wheels")   # gitignored: downloaded wheels
TVM_FFI = "apache-tvm-ffi==0.1.14.post0"                  # the version TVM 0.27 here runs with
LIMIT = 64 * 2 ** 20                                      # what one device command may carry
RTOL = 1e-4
# An output larger than this is saved as this many sampled elements: the benchmark gradients at
# their benchmark sizes (a max-pool input gradient is 82 MB) would not fit in a device command.
# torch autograd still checks those whole.
SAMPLE = 1 << 16
# Quick mode: op-table cases of different kinds (take-clip: the scatter-add), a torch-twinned
# benchmark and the LeNet step.
QUICK_IDS = ("binary-add", "matmul", "conv2d-s2-d1-k3", "softmax", "pool2d-max-k22-s22-d11-p0",
             "take-clip")
LR = 0.01                                                 # benchmarks/ops.py lenet_step's rate


# -- torch twins ------------------------------------------------------------------------------
# The run half cannot import benchmarks/ops.py (it imports TVM), so the torch forward of each
# benchmark case is written again here; the build half checks each against ops.py's `torch_fn`
# on the CPU inputs, so the two cannot drift apart unnoticed.

def _twin(name):
    import torch
    import torch.nn.functional as F

    def pool(kind):
        fn = F.avg_pool2d if kind == "avg" else F.max_pool2d
        return lambda x: fn(x, 2, 2)

    def lenet(x, labels, c1, c2, f1, b1, f2, b2, f3, b3):
        h = F.max_pool2d(F.relu(F.conv2d(x, c1)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, c2)), 2).flatten(1)
        h = F.relu(F.linear(F.relu(F.linear(h, f1, b1)), f2, b2))
        return -(F.log_softmax(F.linear(h, f3, b3), -1) * labels).sum().reshape(1) / x.shape[0]

    return {
        "dense": lambda x, w, b: F.linear(x, w, b),
        "conv_3x3": lambda x, w: F.conv2d(x, w, stride=1, padding=0),
        "conv_5x5_s3": lambda x, w: F.conv2d(x, w, stride=3, padding=1),
        "avg_pool": pool("avg"),
        "max_pool": pool("max"),
        "softmax": lambda x, w: torch.softmax(F.linear(x, w), -1),
        "log_softmax": lambda x, w: torch.log_softmax(F.linear(x, w), -1),
        "flatten": lambda x: x.flatten(1),
        "layer_norm": lambda x, g, b: F.layer_norm(x, (x.shape[-1],), g, b),
        "lenet_step": lenet,
    }[name]


def _twin_of(entry):
    """The torch function of a case: a benchmark's twin above, or a model's models_torch.py."""
    if entry["kind"] == "model":
        import models_torch   # beside this file, here and in the bundle
        name, sizes = entry["twin"]
        return getattr(models_torch, name)(**sizes)
    return _twin(entry["twin"])


def _torch_outputs(entry, tensors):
    """What our module computes, by torch autograd: for a gradient case, the gradients of
    sum(H * f(inputs)) for the `wrt` inputs (H the last tensor); for a training step, the loss and
    the SGD-updated weights; for a model, the loss and its gradients for the `wrt` inputs."""
    import torch

    fn = _twin_of(entry)
    labels = set(entry.get("labels", []))
    if entry["kind"] == "model":
        leaves = [t.detach().clone().requires_grad_(i in entry["wrt"]) for i, t in enumerate(tensors)]
        loss = fn(*leaves)
        return [loss.detach(), *torch.autograd.grad(loss, [leaves[i] for i in entry["wrt"]])]
    if entry["kind"] == "step":
        leaves = [t.detach().clone().requires_grad_(i not in labels) for i, t in enumerate(tensors)]
        loss = fn(*leaves)
        loss.backward()
        return [loss.detach()] + [(t - LR * t.grad).detach() for i, t in enumerate(leaves)
                                  if i in entry["wrt"]]
    *data, head = tensors
    leaves = [t.detach().clone().requires_grad_(i in entry["wrt"]) for i, t in enumerate(data)]
    fn(*leaves).backward(head)
    return [leaves[i].grad for i in entry["wrt"]]


# -- build half (needs apache-tvm) --------------------------------------------------------------

def _op_table_cases(quick):
    """(id, outputs, inputs, values) for each op-table gradient: the optimized gradients for a
    head H, as tests/test_cuda.py builds them, with the case's own input generators."""
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from gradcheck import make_values
    from op_table import IDS, differentiated

    from tvm_autodiff.ir.graph import placeholders

    for cid in (QUICK_IDS if quick else IDS):
        def make(cid=cid):
            c = differentiated(cid)
            params = placeholders([c.out]) + [c.head]
            values = make_values(params, np.random.default_rng(0), c.check.get("gens"))
            return c.opt, params, values
        yield f"op/{cid}", make, None


def _benchmark_cases(quick):
    """The benchmarks/ops.py cases, at their benchmark sizes unless `quick`: each gradient with a
    head H, and the LeNet step; all have torch twins."""
    import numpy as np
    from tvm import te

    sys.path.insert(0, HERE)
    from ops import CASES

    names = ("dense", "lenet_step") if quick else tuple(CASES)
    for name in names:
        def make(name=name):
            case = CASES[name](quick)
            recipe = [("onehot" if t in case.labels else "normal", [int(d) for d in t.shape])
                      for t in case.inputs]
            wrt = [case.inputs.index(w) for w in case.wrt]
            if case.step is not None:
                meta = {"kind": "step", "wrt": wrt, "recipe": recipe,
                        "labels": [case.inputs.index(t) for t in case.labels]}
                return case.step, case.inputs, _regenerate(recipe), meta, case.torch_fn
            head = te.placeholder(case.out.shape, name="H")
            import tvm_autodiff as ad
            outputs = list(ad.differentiate(case.out, case.wrt, head=head))
            recipe.append(("normal", [int(d) for d in case.out.shape]))
            meta = {"kind": "grad", "wrt": wrt, "recipe": recipe}
            return outputs, case.inputs + [head], _regenerate(recipe), meta, case.torch_fn
        yield f"bench/{name}", make, name


# The model steps of benchmarks/models.py that have a PyTorch twin (LeNet's is bench/lenet_step).
MODELS = ("gpt", "resnet", "lstm_T4", "lstm_T16", "mobilenet", "bilateral")
QUICK_MODELS = ("lstm_T4",)


def _model_cases(quick):
    """The model steps: the loss and every weight gradient, built per kernel (kernels="many": on
    CUDA each kernel gets dlight's rules alone, README "One PrimFunc or one kernel per op"), with
    the model's data saved in the bundle."""
    sys.path.insert(0, HERE)

    for name in (QUICK_MODELS if quick else MODELS):
        def make(name=name):
            from models import prepare
            model, outputs, _ = prepare(name, quick)
            meta = {"kind": "model", "twin": list(model.twin), "rtol": max(RTOL, model.rtol),
                    "wrt": [model.inputs.index(w) for w in model.wrt]}
            return outputs, model.inputs, model.data, meta, model.torch_loss
        yield f"model/{name}", make, name


def _cpu_results(outputs, inputs, values, kernels):
    """The CPU (llvm) build and its outputs in the order of the module's output parameters; with
    kernels="one" one PrimFunc, so that --device cpu exports one library like a CUDA build."""
    import tvm_autodiff as ad

    m = ad.build(outputs, inputs, kernels=kernels)
    args = m.prepare(*values)
    m.executable(*args)
    return m, [a.numpy() for a in args[len(inputs):len(inputs) + len(m.outputs)]]


def _check_twin(meta, twin, values, torch_fn, expected):
    """Our twin must compute what ops.py's torch_fn (a model's torch_loss) computes, and autograd
    must agree with the CPU build (a loose check: this only catches a twin that is wrong, not
    float noise)."""
    import numpy as np
    import torch

    entry = {"twin": twin, **meta}
    tensors = [torch.from_numpy(v) for v in values]
    data = tensors if meta["kind"] in ("step", "model") else tensors[:-1]
    with torch.no_grad():
        a, b = _twin_of(entry)(*data), torch_fn(*data)
    torch.testing.assert_close(a, b)
    rtol = max(1e-3, meta.get("rtol", 0.0))   # a model's own tolerance (models_defs.py) when looser
    for got, want in zip(_torch_outputs(entry, tensors), expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))


def _fatbin(source, arch):
    from tvm.support import nvcc
    import tvm

    with tvm.target.Target({"kind": "cuda", "arch": arch}):   # compile_cuda reads Target.current()
        return bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=arch, compiler="nvcc"))


def _wheels(pythons, with_numpy):
    """Paths of the wheels to carry: tvm_ffi for each Python version (and typing_extensions, and
    numpy when asked), downloaded once into WHEEL_CACHE with pip."""
    os.makedirs(WHEEL_CACHE, exist_ok=True)
    wanted = [(TVM_FFI, "apache_tvm_ffi-0.1.14.post0-cp{v}-*.whl")]
    if with_numpy:
        import numpy
        wanted.append((f"numpy=={numpy.__version__}", f"numpy-{numpy.__version__}-cp{{v}}-*.whl"))
    paths = []
    for py in pythons:
        v = py.replace(".", "")
        for req, pattern in wanted:
            found = glob.glob(os.path.join(WHEEL_CACHE, pattern.format(v=v)))
            if not found:
                # The wheels are tagged manylinux_2_24/2_28, so a manylinux2014 platform finds none.
                subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:",
                                "--no-deps", "--python-version", py, "--platform",
                                "manylinux_2_28_x86_64", req, "-d", WHEEL_CACHE], check=True)
                found = glob.glob(os.path.join(WHEEL_CACHE, pattern.format(v=v)))
            paths += found[:1]
    te_wheels = glob.glob(os.path.join(WHEEL_CACHE, "typing_extensions-*-py3-none-any.whl"))
    if not te_wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
                        "typing_extensions>=4.13", "-d", WHEEL_CACHE], check=True)
        te_wheels = glob.glob(os.path.join(WHEEL_CACHE, "typing_extensions-*-py3-none-any.whl"))
    return paths + te_wheels[:1]


def _runtime_libs(device):
    """TVM's runtime libraries from the installed apache-tvm wheel (libtvm_runtime.so; for CUDA
    also libtvm_runtime_cuda.so and the libcudart.so.13 it links, in case the GPU machine's
    loader path has no CUDA 13 runtime)."""
    import tvm

    lib = os.path.join(os.path.dirname(tvm.__file__), "lib")
    libs = [os.path.join(lib, "libtvm_runtime.so")]
    if device == "cuda":
        libs.append(os.path.join(lib, "libtvm_runtime_cuda.so"))
        out = subprocess.run(["ldd", libs[-1]], capture_output=True, text=True).stdout
        cudart = [ln.split("=>")[1].split()[0] for ln in out.splitlines()
                  if "libcudart.so" in ln and "=>" in ln and "not found" not in ln]
        libs += cudart[:1]
    return libs


def build(args):
    import numpy as np

    bundle = os.path.abspath(args.bundle)
    cases_dir = os.path.join(bundle, "cases")
    shutil.rmtree(bundle, ignore_errors=True)
    os.makedirs(cases_dir)
    import tvm_autodiff as ad

    target = {"kind": "cuda", "arch": args.arch} if args.device == "cuda" else "llvm"
    entries = []
    groups = {"op": _op_table_cases, "bench": _benchmark_cases, "model": _model_cases}
    sources = [c for g in args.groups for c in groups[g](args.quick)]
    if args.only:
        sources = [s for s in sources if s[0] in args.only]
    for k, (cid, make, twin) in enumerate(sources):
        t0 = time.perf_counter()
        entry = {"id": cid, "twin": twin, "kind": "grad"}
        try:
            made = make()
            outputs, inputs, values = made[:3]
            if twin:
                entry.update(made[3])
            kernels = "many" if entry["kind"] == "model" else "one"
            cpu, expected = _cpu_results(outputs, inputs, values, kernels)
            if twin:
                _check_twin(made[3], entry["twin"], values, made[4], expected)
            m = ad.build(outputs, inputs, target=target, kernels=kernels) \
                if args.device == "cuda" else cpu
            stem = f"case{k:03d}"
            if args.device == "cuda":
                source = m.source
                with open(os.path.join(cases_dir, stem + ".fatbin"), "wb") as f:
                    f.write(_fatbin(source, args.arch))
                entry["sha256"] = hashlib.sha256(source.encode()).hexdigest()
            m.executable.executable.mod.export_library(os.path.join(cases_dir, stem + ".so"))
            entry["vm"] = m.module is not None
            entry["rules"] = dict(Counter(m.rules.values()))   # GPU rule -> blocks it scheduled
            saved = {} if "recipe" in entry else {f"in{i}": v for i, v in enumerate(values)}
            for i, v in enumerate(expected):
                if v.size > SAMPLE:
                    idx = np.sort(np.random.default_rng(i).choice(v.size, SAMPLE, replace=False))
                    saved[f"out{i}_idx"], v = idx, v.ravel()[idx]
                saved[f"out{i}"] = v
            np.savez(os.path.join(cases_dir, stem + ".npz"), **saved)
            entry.update(stem=stem, inputs=[t.name for t in inputs],
                         outputs=[t.name for t in m.outputs],
                         out_shapes=[list(v.shape) for v in expected],
                         out_dtypes=[str(v.dtype) for v in expected])
        except Exception as err:   # recorded and reported by the run half; the others go on
            entry["build_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        entry["build_s"] = round(time.perf_counter() - t0, 2)
        entries.append(entry)
        print(f"[{k + 1}/{len(sources)}] {cid}: {entry.get('build_error', 'ok')} "
              f"({entry['build_s']} s)", flush=True)
    # --local runs with the installed apache-tvm, so it packs no runtime.
    packs = () if args.local else (("runtime", _runtime_libs(args.device)),
                                   ("wheels", _wheels(args.python, args.with_numpy)))
    for sub, paths in packs:
        os.makedirs(os.path.join(bundle, sub))
        for p in paths:
            shutil.copy(p, os.path.join(bundle, sub, os.path.basename(p)))
    for script in (os.path.abspath(__file__), os.path.join(HERE, "models_torch.py")):
        shutil.copy(script, os.path.join(bundle, os.path.basename(script)))
    manifest = {"device": args.device, "target": target, "cases": entries}
    with open(os.path.join(bundle, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    with open(os.path.join(bundle, "rules.md"), "w") as f:
        f.write("\n".join(_rules_table(manifest)) + "\n")
    sizes = {sub: _size(os.path.join(bundle, sub)) for sub in ("cases", "runtime", "wheels")}
    total = _size(bundle)
    print("bundle", bundle, " ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()),
          f"total {total / 2**20:.1f} MiB")
    for p in sorted(glob.glob(os.path.join(bundle, "runtime", "*"))):
        print(f"  runtime/{os.path.basename(p)} {os.path.getsize(p) / 2**20:.2f} MiB")
    if total > LIMIT:
        raise SystemExit(f"bundle is {total / 2**20:.1f} MiB, over the {LIMIT // 2**20} MiB a "
                         f"device command carries: build it in parts with --only")
    failed = [e["id"] for e in entries if "build_error" in e]
    print(f"{len(entries) - len(failed)} built, {len(failed)} failed: {failed}")


def _size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# -- run half (tvm_ffi, numpy and, for CUDA, torch only) ----------------------------------------

def _load_runtime(bundle, device, local):
    """Import tvm_ffi and load TVM's runtime libraries without the apache-tvm Python package
    (with --local, from the installed one).  Returns the tvm_ffi module."""
    if local:
        import tvm  # noqa: F401  (loads libtvm_runtime and its CUDA part)
        import tvm_ffi
        return tvm_ffi
    target = tempfile.mkdtemp(prefix="gpu_check_py")
    wheels = glob.glob(os.path.join(bundle, "wheels", "*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--quiet",
                    "--disable-pip-version-check", "--find-links", os.path.join(bundle, "wheels"),
                    "--target", target, "apache-tvm-ffi"] +
                   [w for w in wheels if os.path.basename(w).startswith("numpy-")], check=True)
    sys.path.insert(0, target)
    import tvm_ffi

    lib = os.path.join(bundle, "runtime")
    ctypes.CDLL(os.path.join(lib, "libtvm_runtime.so"), ctypes.RTLD_GLOBAL)
    if device == "cuda":
        try:
            ctypes.CDLL("libcudart.so.13", ctypes.RTLD_GLOBAL)
        except OSError:   # no CUDA 13 runtime on the loader path: the one carried
            ctypes.CDLL(glob.glob(os.path.join(lib, "libcudart.so*"))[0], ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.path.join(lib, "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
    return tvm_ffi


def _regenerate(recipe):
    """The inputs of a benchmark case from its recipe [(kind, shape)], drawn in order from numpy's
    PCG64 with seed 0 (a stream that numpy keeps stable across versions), so that the build half
    need not carry them: "normal" floats, or "onehot" rows of labels."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [np.eye(shape[1], dtype="float32")[rng.integers(0, shape[1], shape[0])]
            if kind == "onehot" else rng.standard_normal(shape).astype("float32")
            for kind, shape in recipe]


def _aligned(a):
    """A C-contiguous copy of `a` at a 64-byte boundary, which the compiled CPU code assumes."""
    import numpy as np

    raw = np.empty(a.nbytes + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _rel_err(got, want):
    """max |got - want| over max(|want|, 1): the error relative to the tensor's scale."""
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.size == 0:
        return 0.0
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def _time_ms(fn, sync, events, reps):
    """Median ms of `fn` over `reps` runs after 3 warm-ups: CUDA events on the default stream
    (which TVM's kernels run on too) for CUDA, the wall clock for CPU."""
    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(reps):
        if events:
            import torch
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return sorted(samples)[len(samples) // 2]


# vm_initialization's arguments: (DLPack device type, index, allocator) per device, the host
# last; allocator 2 is the VM's pooled allocator.
VM_DEVICES = {"cuda": (2, 0, 2, 1, 0, 2), "cpu": (1, 0, 2)}


def _vm_call(module, device, tvm_ffi, ins, wrap):
    """(a call of a per-kernel module's `main` on the Relax VM of the runtime, its outputs after
    a first call as torch or numpy arrays): `main` returns its outputs, in the order of the
    build's output parameters."""
    vm = module["vm_load_executable"]()
    vm["vm_initialization"](*VM_DEVICES[device])
    main, args = vm["main"], [tvm_ffi.from_dlpack(t) for t in ins]
    call = functools.partial(main, *args)
    return call, [wrap(o) for o in call()]


def run(args):
    bundle = os.path.abspath(args.bundle)
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    device = manifest["device"]
    tvm_ffi = _load_runtime(bundle, device, args.local)
    sys.path.insert(0, bundle)   # models_torch.py
    import numpy as np   # after _load_runtime: the bundle may carry it
    fatbins = {}   # SHA-256 of a module's CUDA C -> its fatbin; "current": the module loading

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compiled(code, *_):
        return fatbins.get(hashlib.sha256(str(code).encode()).hexdigest(), fatbins["current"])

    if device == "cuda":
        import torch
        dev = torch.device("cuda")
        to_dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
        from_dev = lambda t: t.cpu().numpy()  # noqa: E731
        wrap, sync = torch.from_dlpack, torch.cuda.synchronize
    else:
        to_dev, from_dev, wrap, sync = _aligned, np.asarray, np.from_dlpack, lambda: None
    results = []
    for entry in manifest["cases"]:
        row = {"id": entry["id"]}
        results.append(row)
        if "build_error" in entry:
            row.update(status="build failed", error=entry["build_error"])
            continue
        try:
            stem = os.path.join(bundle, "cases", entry["stem"])
            if device == "cuda":
                with open(stem + ".fatbin", "rb") as f:
                    fatbins[entry["sha256"]] = fatbins["current"] = f.read()
            module = tvm_ffi.load_module(stem + ".so")
            data = np.load(stem + ".npz")
            n_in, n_out = len(entry["inputs"]), len(entry["outputs"])
            values = _regenerate(entry["recipe"]) if "recipe" in entry else \
                [data[f"in{i}"] for i in range(n_in)]
            ins = [to_dev(v) for v in values]
            if entry.get("vm"):
                call, outs = _vm_call(module, device, tvm_ffi, ins, wrap)
            else:
                outs = [to_dev(np.zeros(s, d)) for s, d in zip(entry["out_shapes"], entry["out_dtypes"])]
                call = functools.partial(module["main"], *(tvm_ffi.from_dlpack(t) for t in ins + outs))
                call()
            sync()

            def sampled(i):   # output i where the CPU result was saved (all of it, or a sample)
                got = from_dev(outs[i])
                return got.ravel()[data[f"out{i}_idx"]] if f"out{i}_idx" in data else got
            row["cpu_rel_err"] = max([_rel_err(sampled(i), data[f"out{i}"]) for i in range(n_out)]
                                     or [0.0])
            row["ours_ms"] = _time_ms(call, sync, device == "cuda", args.reps)
            if entry["twin"] and device == "cuda":
                ref = _torch_outputs(entry, ins)
                row["torch_rel_err"] = max(_rel_err(from_dev(o), from_dev(r)) for o, r in zip(outs, ref))
                row["torch_ms"] = _time_ms(lambda: _torch_outputs(entry, ins), sync, True, args.reps)
            rtol = entry.get("rtol", RTOL)
            ok = row["cpu_rel_err"] <= rtol and row.get("torch_rel_err", 0.0) <= rtol
            row["status"] = "match" if ok else "MISMATCH"
        except Exception as err:
            row.update(status="run failed", error=f"{type(err).__name__}: {str(err)[:300]}")
        print(row["id"], row["status"], flush=True)
    _write(args.out, manifest, results)
    return results


def _rules_table(manifest) -> list:
    """Markdown lines: per case, how many blocks each schedule rule scheduled."""
    lines = [f"Schedule rules of the {manifest['device']} build (blocks per rule):", "",
             "| case | rules |", "|---|---|"]
    for e in manifest["cases"]:
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(e.get("rules", {}).items(), key=str))
        lines.append(f"| {e['id']} | {rules} |")
    return lines


def _write(out, manifest, results):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"target": manifest["target"], "results": results}, f, indent=1)

    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = ["| case | status | rel. err vs CPU | rel. err vs torch | ours ms | torch ms | torch/ours |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        speed = r["torch_ms"] / r["ours_ms"] if r.get("torch_ms") and r.get("ours_ms") else None
        lines.append(f"| {r['id']} | {r['status']} | {num(r.get('cpu_rel_err'), '.1e')} | "
                     f"{num(r.get('torch_rel_err'), '.1e')} | {num(r.get('ours_ms'), '.3f')} | "
                     f"{num(r.get('torch_ms'), '.3f')} | {num(speed, '.2f')} |")
    lines += ["", *_rules_table(manifest)]
    counts = Counter(r["status"] for r in results)
    lines.append("")
    lines.append(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(lines[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("half", nargs="?", choices=("build", "run"))
    p.add_argument("--bundle", help="the bundle folder (written by build, read by run)")
    p.add_argument("--out", default="gpu_check_out", help="run: where results.json/.md go")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--arch", default="sm_90", help="build: the CUDA arch (H200: sm_90)")
    p.add_argument("--quick", action="store_true", help="build: a handful of cases only")
    p.add_argument("--groups", nargs="*", choices=("op", "bench", "model"), default=["op", "bench", "model"],
                   help="build: the op-table gradients, the op benchmark's cases, the model steps")
    p.add_argument("--only", nargs="*",
                   help="build: these case ids only (op/<id>, bench/<name>, model/<name>)")
    p.add_argument("--python", nargs="*", default=["3.12"],
                   help="build: Python versions to carry tvm_ffi wheels for")
    p.add_argument("--with-numpy", action="store_true", help="build: carry a numpy wheel too")
    p.add_argument("--reps", type=int, default=20, help="run: timed runs per case")
    p.add_argument("--local", action="store_true",
                   help="both halves here, with the installed apache-tvm (run: use it)")
    args = p.parse_args(argv)
    if args.half == "build":
        build(args)
    elif args.half == "run":
        run(args)
    elif args.local:
        args.bundle = args.bundle or tempfile.mkdtemp(prefix="gpu_check_bundle")
        build(args)
        run(args)
    else:
        p.error("say build, run or --local")


if __name__ == "__main__":
    main()
