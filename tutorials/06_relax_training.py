"""
Train a PyTorch transformer through Relax
=========================================

A small character-level transformer language model written in PyTorch, trained with
``tvm.relax.training`` on gradients from ``tvm_autodiff.relax``:

1. generate a text corpus (a toy grammar, so the script needs no download);
2. export the ``nn.Module`` with ``torch.export`` and import it with ``from_exported_program``;
3. ``tvm_autodiff.relax.register_gradients()`` gives every Relax op with a TE legalization a
   gradient (GELU, LayerNorm, attention, the ``gather_elements`` of ``F.cross_entropy``, ...);
4. train it with ``SetupTrainer``/``Trainer`` and Adam, and the same model in torch from the same
   initial weights on the same batches;
5. plot both loss curves (``06_relax_training.png``) and print the step time of each.

Run it with ``python tutorials/06_relax_training.py``; ``TVM_AUTODIFF_FAST=1`` trains a smaller
model for a few steps (the tests run it so).
"""

# %%
# The corpus and the model
# ------------------------

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from torch import nn
from tvm import relax
from tvm.relax.frontend import detach_params
from tvm.relax.frontend.torch import from_exported_program
from tvm.relax.training import SetupTrainer, Trainer

import tvm_autodiff.relax as ar

FAST = os.environ.get("TVM_AUTODIFF_FAST") == "1"
OUT = os.environ.get("TVM_AUTODIFF_TUTORIAL_OUT", os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH, SEQ, DIM = (8, 4, 8, 16) if FAST else (150, 16, 32, 32)
LR = 3e-3

rng = np.random.default_rng(0)
subjects, verbs, objects = ["the cat", "a dog", "my robot", "the bird"], ["sees", "likes", "finds"], \
    ["a ball", "the moon", "some fish", "a tree"]
corpus = " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(400))
chars = sorted(set(corpus))
data = np.array([chars.index(c) for c in corpus], "int64")
print(f"corpus: {len(corpus)} characters, vocabulary {len(chars)}")


class CharLM(nn.Module):
    """Embedding + position table, one pre-norm causal attention block, a GELU MLP, and the
    next-character cross-entropy inside forward (it imports as log_softmax, gather_elements and
    squeeze)."""

    def __init__(self, vocab, dim, seq, heads=2):
        super().__init__()
        self.heads = heads
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.randn(seq, dim) * 0.1)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # The key projection has no bias: softmax ignores it, so its gradient is 0 and Adam would
        # take steps of float32 noise on it (in torch and TVM alike).
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim)
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, vocab)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens, targets):
        b, t = tokens.shape
        x = self.embed(tokens) + self.pos[:t]
        h = self.ln1(x)
        q, k, v = (f(h).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return F.cross_entropy(self.head(x).reshape(b * t, -1), targets.reshape(b * t))


def batch():
    starts = rng.integers(0, len(data) - SEQ - 1, BATCH)
    x = np.stack([data[s:s + SEQ] for s in starts])
    return x, np.stack([data[s + 1:s + SEQ + 1] for s in starts])


torch.manual_seed(0)
model = CharLM(len(chars), DIM, SEQ)
batches = [batch() for _ in range(STEPS)]

# %%
# Export, import, register the gradients, set up the trainer
# ----------------------------------------------------------
# ``take`` (the embedding) is overridden: TVM's own take gradient needs 1-d indices.

example = (torch.zeros(BATCH, SEQ, dtype=torch.int64), torch.zeros(BATCH, SEQ, dtype=torch.int64))
mod, params = detach_params(from_exported_program(torch.export.export(model, example),
                                                  keep_params_as_input=True))
ar.register_gradients(override=["relax.take"])
train_mod = SetupTrainer(ar.ModelLoss(), ar.Adam(LR), [relax.TensorType((), "float32")])(ar.backbone(mod))
train_mod = ar.prepare_gradients(train_mod, "llvm")
start = time.perf_counter()
vm = relax.VirtualMachine(tvm.compile(train_mod, "llvm"), tvm.cpu())
print(f"compiled the training module in {time.perf_counter() - start:.1f} s")
trainer = Trainer(train_mod, vm, tvm.cpu(), zero_init_param_state=False)
trainer.load_params([p.numpy() for p in params["main"]])

# %%
# Train both
# ----------

ours, our_times = [], []
for x, y in batches:
    start = time.perf_counter()
    ours.append(float(trainer.update([x, y], []).numpy()))
    our_times.append(time.perf_counter() - start)

optimizer = torch.optim.Adam(model.parameters(), LR)
theirs, their_times = [], []
for x, y in batches:
    start = time.perf_counter()
    optimizer.zero_grad()
    loss = model(torch.from_numpy(x), torch.from_numpy(y))
    loss.backward()
    optimizer.step()
    theirs.append(loss.item())
    their_times.append(time.perf_counter() - start)

diff = float(np.max(np.abs(np.array(ours) - theirs) / np.abs(theirs)))
print(f"losses: relax {ours[0]:.4f} -> {ours[-1]:.4f}, torch {theirs[0]:.4f} -> {theirs[-1]:.4f}; "
      f"largest relative difference {diff:.2e}")
assert diff < (1e-5 if FAST else 1e-3), diff
assert ours[-1] < ours[0]
print("OK the Relax training matches torch's losses")
skip = min(3, STEPS - 1)      # the first steps warm caches up
our_ms, their_ms = 1e3 * np.median(our_times[skip:]), 1e3 * np.median(their_times[skip:])
print(f"step time: relax {our_ms:.2f} ms, torch {their_ms:.2f} ms ({torch.get_num_threads()} threads)")
print(f"RESULT lm first_loss={ours[0]:.4f} last_loss={ours[-1]:.4f} step_ms={our_ms:.3f} torch_step_ms={their_ms:.3f}")

# %%
# The loss curves
# ---------------

import matplotlib.pyplot as plt  # noqa: E402

plt.figure(figsize=(6, 3.5))
plt.plot(theirs, label="torch", linewidth=3, alpha=0.5)
plt.plot(ours, "--", label="relax + tvm_autodiff")
plt.xlabel("step")
plt.ylabel("cross-entropy")
plt.legend()
plt.tight_layout()
path = os.path.join(OUT, "06_relax_training.png")
plt.savefig(path, dpi=100)
print(f"OK wrote {path}")
