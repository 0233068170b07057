"""Training-step time of the torch models of tests/test_relax_training.py (MLP, CNN with
BatchNorm, transformer LM), trained through tvm.relax.training with tvm_autodiff.relax
gradients, next to the same step in torch CPU with the same number of threads.

    python benchmarks/relax.py [--quick]

A step is Trainer.update (forward, gradient, SGD update, on the Relax VM) against
zero_grad/forward/backward/step in torch.  Three TVM builds per model: the kernels as
relax.training leaves them ("plain"), ours prepared (prepare_gradients(mod, "llvm"): the default
schedule where timed faster), and every kernel prepared (kernels="all").  Times are medians after
warm-up (run.py's _median_ms); the machine is shared, so they are noisy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from run import _median_ms  # noqa: E402  (shared with the op benchmark)


def _models(quick: bool):
    """(name, model, example inputs, a batch of numpy inputs, loss, loss types, torch loss)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tvm import relax
    from tvm.relax.training import loss as relax_loss

    import tvm_autodiff.relax as ar
    from test_relax_training import CNN, MLP, TinyLM

    rng = np.random.default_rng(0)
    b = 16 if quick else 64
    mlp_x, mlp_y = rng.standard_normal((b, 64)).astype("float32"), rng.standard_normal((b, 10)).astype("float32")
    cnn_x, cnn_y = (rng.standard_normal((b // 2, 3, 16, 16)).astype("float32"),
                    rng.standard_normal((b // 2, 10)).astype("float32"))
    seq, vocab = 16, 64
    tokens = rng.integers(0, vocab, (b // 4, seq))
    mse = relax_loss.MSELoss(reduction="mean")
    return [
        ("mlp", MLP(64, 256, 10), (torch.zeros(b, 64),), ([mlp_x], [mlp_y]), mse,
         [relax.TensorType((b, 10), "float32")] * 2, F.mse_loss),
        ("cnn", CNN(3, 16, 16, 10), (torch.zeros(b // 2, 3, 16, 16),), ([cnn_x], [cnn_y]), mse,
         [relax.TensorType((b // 2, 10), "float32")] * 2, F.mse_loss),
        ("lm", TinyLM(vocab, 32, 4, seq), (torch.zeros(b // 4, seq, dtype=torch.int64),) * 2,
         ([tokens, np.roll(tokens, -1, 1)], []), ar.ModelLoss(), [relax.TensorType((), "float32")],
         lambda loss: loss),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batches")
    args = parser.parse_args()

    import torch
    import tvm
    from tvm import relax
    from tvm.relax.training import SetupTrainer, Trainer
    from tvm.relax.training import optimizer as relax_optimizer

    import tvm_autodiff.relax as ar
    from test_relax_training import import_model

    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    ar.register_gradients(override=["relax.take"])
    print(f"{'model':6s} {'plain ms':>9s} {'ours ms':>9s} {'all ms':>9s} {'torch ms':>9s} {'torch/all':>9s}"
          f"   ({threads} threads)")
    for name, model, example, (x, y), loss, loss_types, torch_loss in _models(args.quick):
        mod, params = import_model(model, example)
        train = SetupTrainer(loss, relax_optimizer.SGD(0.01), loss_types)(mod)
        times = {}
        for label, prepare in [("plain", lambda m: m), ("ours", lambda m: ar.prepare_gradients(m, "llvm")),
                               ("all", lambda m: ar.prepare_gradients(m, "llvm", kernels="all"))]:
            start = time.perf_counter()
            prepared = prepare(train)
            vm = relax.VirtualMachine(tvm.compile(prepared, "llvm"), tvm.cpu())
            build_s = time.perf_counter() - start
            trainer = Trainer(prepared, vm, tvm.cpu(), zero_init_param_state=False)
            trainer.load_params(list(params))
            times[label] = _median_ms(lambda: trainer.update(list(x), list(y)))
            print(f"  {name} {label}: prepared and built in {build_s:.1f} s", file=sys.stderr)
        optimizer = torch.optim.SGD(model.parameters(), 0.01)
        tx, ty = [torch.from_numpy(a) for a in x], [torch.from_numpy(a) for a in y]

        def torch_step():
            optimizer.zero_grad()
            torch_loss(model(*tx), *ty).backward()
            optimizer.step()

        theirs = _median_ms(torch_step)
        print(f"{name:6s} {times['plain']:9.3f} {times['ours']:9.3f} {times['all']:9.3f} {theirs:9.3f} "
              f"{theirs / times['all']:9.2f}")


if __name__ == "__main__":
    main()
