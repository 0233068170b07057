"""torch nn.Modules exported with torch.export, imported with from_exported_program, and trained
5 steps through tvm.relax.training (SetupTrainer, Trainer) with the gradients of
tvm_autodiff.relax, against the same steps in torch: losses and parameters to 1e-5 relative."""
from __future__ import annotations

import re

import numpy as np
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
from test_tutorials import run_tutorial

STEPS = 5
LR = 0.05
ADAM_LR = 0.01      # Adam's steps are lr-sized whatever the gradient: a larger one makes float32 noise visible
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
                                 (ar.Adam(ADAM_LR), lambda p: torch.optim.Adam(p, ADAM_LR))]:
        model = make_model()
        mod, params = import_model(model, example)
        ours, our_params = train_tvm(mod, loss, loss_args, relax_opt, params, batches)
        theirs, their_params = train_torch(model, torch_loss, torch_opt(model.parameters()), batches)
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, err_msg=f"{type(relax_opt).__name__} losses")
        for i, (a, b) in enumerate(zip(our_params, their_params)):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * np.abs(b).max(),
                                       err_msg=f"{type(relax_opt).__name__}: parameter {i}")


class MLP(nn.Module):
    def __init__(self, d_in=6, hidden=8, d_out=3):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)

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


class CNN(nn.Module):
    def __init__(self, c_in=2, channels=4, size=6, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(c_in, channels, 3, padding=1, bias=False)   # a bias before BatchNorm has gradient 0
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * (size // 2) ** 2, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2), 1))


def test_cnn_with_batch_norm_trains_as_in_torch():
    torch.manual_seed(1)
    batches = _batches(np.random.default_rng(1), (4, 2, 6, 6), (4, 5))
    types = [relax.TensorType((4, 5), "float32")] * 2
    check_training(CNN, (torch.zeros(4, 2, 6, 6),), batches, relax_loss.MSELoss(reduction="mean"), types,
                   F.mse_loss)


class TinyLM(nn.Module):
    """Embedding, one pre-norm attention block (scaled_dot_product_attention), a GELU MLP, and
    F.cross_entropy of the next token (imported as log_softmax, gather_elements and squeeze)."""

    def __init__(self, vocab=11, dim=8, heads=2, seq=6):
        super().__init__()
        self.heads = heads
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.randn(seq, dim) * 0.1)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # The key's bias has gradient 0 (softmax ignores a constant per row), and Adam would turn
        # its float32 noise into lr-sized steps in torch and TVM alike.
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens, targets):
        b, t = tokens.shape
        x = self.embed(tokens) + self.pos[:t]
        h = self.ln1(x)
        q, k, v = (f(h).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(att)
        x = x + self.mlp(self.ln2(x))
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(b * t))


def test_transformer_lm_trains_as_in_torch():
    torch.manual_seed(2)
    rng = np.random.default_rng(2)
    tokens = [rng.integers(0, 11, (3, 6)) for _ in range(STEPS)]
    batches = [([x, np.roll(x, -1, 1)], []) for x in tokens]
    ar.register_gradients(override=["relax.take"])     # TVM's take gradient needs 1-d indices
    example = (torch.zeros(3, 6, dtype=torch.int64), torch.zeros(3, 6, dtype=torch.int64))
    check_training(TinyLM, example, batches, ar.ModelLoss(), [relax.TensorType((), "float32")],
                   lambda loss: loss)


def test_tutorial_06_relax_training_fast_mode(tmp_path):
    """tutorials/06_relax_training.py in fast mode: its own asserts compare the losses with
    torch's; here the loss falls and the plot exists."""
    out = run_tutorial("06_relax_training.py", tmp_path)
    assert "OK the Relax training matches torch's losses" in out
    result = dict(re.findall(r"(\w+)=([\d.]+)", re.search(r"^RESULT lm (.*)$", out, re.M).group(1)))
    assert float(result["last_loss"]) < float(result["first_loss"])
    assert (tmp_path / "06_relax_training.png").stat().st_size > 0
