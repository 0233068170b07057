"""torch nn.Modules exported with torch.export, imported with from_exported_program, and trained
5 steps through tvm.relax.training (SetupTrainer, Trainer) with the gradients of
tvm_autodiff.relax, against the same steps in torch: losses and parameters to 1e-5 relative."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from torch import nn
from tvm import relax
from tvm.relax.frontend import detach_params
from tvm.relax.frontend.torch import from_exported_program
from tvm.relax.training import SetupTrainer, Trainer
from tvm.relax.training import loss as relax_loss
from tvm.relax.training import optimizer as relax_optimizer

import tvm_autodiff.relax as ar

STEPS = 5
LR = 0.05
RTOL = 1e-5


def import_model(model: nn.Module, example: tuple):
    """(backbone module, initial parameter values in the backbone's order)."""
    model.train()
    exported = torch.export.export(model, example)
    mod, params = detach_params(from_exported_program(exported, keep_params_as_input=True))
    return ar.backbone(mod), [p.numpy() for p in params["main"]]


def train_tvm(mod, loss, loss_args, optimizer, params, batches):
    """Per-step losses and the final parameters of SetupTrainer/Trainer on `batches`
    [(inputs, targets)]."""
    ar.register_gradients()
    train_mod = ar.prepare_gradients(SetupTrainer(loss, optimizer, loss_args)(mod), "llvm")
    vm = relax.VirtualMachine(tvm.compile(train_mod, "llvm"), tvm.cpu())
    trainer = Trainer(train_mod, vm, tvm.cpu(), zero_init_param_state=False)
    trainer.load_params(list(params))
    losses = [float(trainer.update(list(x), list(y)).numpy()) for x, y in batches]
    return losses, [p.numpy() for p in trainer._params]


def train_torch(model, loss_fn, optimizer, batches):
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(*[torch.from_numpy(a) for a in x]), *[torch.from_numpy(a) for a in y])
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses, [p.detach().numpy() for p in model.parameters()]


def check_training(make_model, example, batches, loss, loss_args, torch_loss):
    """Both optimizers: the losses and parameters of 5 steps equal torch's."""
    for relax_opt, torch_opt in [(relax_optimizer.SGD(LR), lambda p: torch.optim.SGD(p, LR)),
                                 (ar.Adam(LR), lambda p: torch.optim.Adam(p, LR))]:
        model = make_model()
        mod, params = import_model(model, example)
        ours, our_params = train_tvm(mod, loss, loss_args, relax_opt, params, batches)
        theirs, their_params = train_torch(model, torch_loss, torch_opt(model.parameters()), batches)
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, err_msg=f"{type(relax_opt).__name__} losses")
        for i, (a, b) in enumerate(zip(our_params, their_params)):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * np.abs(b).max(),
                                       err_msg=f"{type(relax_opt).__name__}: parameter {i}")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(F.gelu(self.l1(x)))


def _batches(rng, x_shape, y_shape):
    return [([rng.standard_normal(x_shape).astype("float32")], [rng.standard_normal(y_shape).astype("float32")])
            for _ in range(STEPS)]


def test_mlp_trains_as_in_torch():
    torch.manual_seed(0)
    batches = _batches(np.random.default_rng(0), (4, 6), (4, 3))
    types = [relax.TensorType((4, 3), "float32")] * 2
    check_training(MLP, (torch.zeros(4, 6),), batches, relax_loss.MSELoss(reduction="mean"), types,
                   F.mse_loss)
