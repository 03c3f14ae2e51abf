"""PyTorch reference fixtures for the fused ops of `multimix_backbones::ops` and `multimix_augment::loss`.

Re-run from the repository root (fixed seed, deterministic output):

    /work/pyref/bin/python tools/make_ops_fixtures.py

Writes
    crates/backbones/tests/fixtures/ops.safetensors   layer_norm, softmax, gelu (exact erf), bias_add
    crates/augment/tests/fixtures/loss.safetensors    SoftTargetCrossEntropy (timm), log_softmax

Every case stores its f32 inputs, a random upstream gradient `gy`, the output `y` and the autograd
gradients `g<input>`. References are computed in float64 from the stored f32 inputs (so they are
the exact values the f32 kernels approximate) and stored as f32.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.loss import SoftTargetCrossEntropy

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-6


def f32(t):
    return t.to(torch.float32).contiguous()


def leaf(t, requires_grad):
    return t.to(torch.float32).to(torch.float64).requires_grad_(requires_grad)


def run_case(out, name, fn, inputs, scalar_output=False, constants=()):
    """Evaluates fn on float64 leaves, backpropagates a random upstream gradient, stores f32.

    Inputs named in `constants` get no gradient (the soft targets of the loss).
    """
    leaves = {k: leaf(v, k not in constants) for k, v in inputs.items()}
    y = fn(**leaves)
    gy = torch.rand(()) + 0.5 if scalar_output else torch.randn(y.shape)
    gy = gy.to(torch.float32)
    y.backward(gy.to(torch.float64))
    for k, v in leaves.items():
        out[f"{name}.{k}"] = f32(v.detach())
        if v.grad is not None:
            out[f"{name}.g{k}"] = f32(v.grad)
    out[f"{name}.gy"] = f32(gy)
    out[f"{name}.y"] = f32(y.detach())


def layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=EPS)


def bias_add(x, b):
    return x + b


def ops_fixtures():
    out = {}
    ln = lambda shape, scale, offset: dict(  # noqa: E731
        x=torch.randn(shape) * scale + offset,
        w=torch.randn(shape[-1:]),
        b=torch.randn(shape[-1:]),
    )
    run_case(out, "ln", layer_norm, ln((3, 5, 8), 2.0, 0.5))
    run_case(out, "ln_wide", layer_norm, ln((4, 9, 37), 1.0, -1.0))
    # Large mean, small spread: catches one-pass variance and f32 accumulation.
    run_case(out, "ln_offset", layer_norm, ln((6, 24), 0.1, 50.0))

    run_case(out, "softmax", lambda x: F.softmax(x, dim=-1), dict(x=torch.randn(3, 5, 8) * 3))
    run_case(out, "softmax_wide", lambda x: F.softmax(x, dim=-1), dict(x=torch.randn(2, 3, 65) * 5))
    # |x| up to ~100: needs the max subtraction.
    run_case(out, "softmax_large", lambda x: F.softmax(x, dim=-1), dict(x=torch.randn(4, 10) * 40))

    gelu = lambda x: F.gelu(x, approximate="none")  # noqa: E731
    run_case(out, "gelu", gelu, dict(x=torch.randn(3, 5, 8) * 3))
    run_case(out, "gelu_grid", gelu, dict(x=torch.linspace(-10.0, 10.0, 1001)))

    run_case(out, "bias", bias_add, dict(x=torch.randn(3, 5, 8), b=torch.randn(8)))
    run_case(out, "bias_wide", bias_add, dict(x=torch.randn(4, 9, 37), b=torch.randn(37)))
    return out


def soft_targets(rows, classes, smoothing=0.1):
    """Mixup-style targets: lam * onehot(a) + (1 - lam) * onehot(b), label-smoothed; rows sum to 1."""
    a = F.one_hot(torch.randint(classes, (rows,)), classes).float()
    b = F.one_hot(torch.randint(classes, (rows,)), classes).float()
    lam = torch.rand(rows, 1)
    mixed = lam * a + (1 - lam) * b
    return mixed * (1 - smoothing) + smoothing / classes


def loss_fixtures():
    out = {}
    ce = SoftTargetCrossEntropy()
    ce_fn = lambda logits, targets: ce(logits, targets)  # noqa: E731
    run_case(out, "ce", ce_fn, dict(logits=torch.randn(6, 10) * 3, targets=soft_targets(6, 10)), True, ("targets",))
    # Leading dims [2, 3] are rows; Dirichlet targets.
    dirichlet = torch.distributions.Dirichlet(torch.ones(7)).sample((2, 3))
    run_case(out, "ce_nd", ce_fn, dict(logits=torch.randn(2, 3, 7) * 2, targets=dirichlet), True, ("targets",))
    # Large logits (stability) and targets that do not sum to 1 (general formula).
    run_case(
        out,
        "ce_large",
        ce_fn,
        dict(logits=torch.randn(5, 12) * 40, targets=torch.rand(5, 12) * 0.2),
        True,
        ("targets",),
    )

    lsm = lambda x: F.log_softmax(x, dim=-1)  # noqa: E731
    run_case(out, "lsm", lsm, dict(x=torch.randn(4, 6, 10) * 2))
    run_case(out, "lsm_large", lsm, dict(x=torch.randn(3, 37) * 40))
    return out


def main():
    torch.manual_seed(20261122)
    ops = ops_fixtures()
    loss = loss_fixtures()
    save_file(ops, str(ROOT / "crates/backbones/tests/fixtures/ops.safetensors"))
    save_file(loss, str(ROOT / "crates/augment/tests/fixtures/loss.safetensors"))
    print(f"ops: {len(ops)} tensors, loss: {len(loss)} tensors")


if __name__ == "__main__":
    main()
