"""Reference fixtures for `multimix-recipes` optimizers, schedules, clipping and EMA.

Re-run (from the workspace root) with:

    /work/pyref/bin/python tools/make_optim_fixtures.py

It writes `crates/recipes/tests/fixtures/optim.json` from PyTorch (torch.optim.SGD, torch.optim.AdamW,
torch.nn.utils.clip_grad_norm_) and timm (CosineLRScheduler, StepLRScheduler, ModelEmaV3,
param_groups_weight_decay). Every float tensor is float32; values are written as the exact float64
of each float32 so the Rust tests can rebuild them bit for bit.
"""

import fnmatch
import json
import pathlib

import timm
import torch
from timm.optim._param_groups import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.utils.model_ema import ModelEmaV3

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/recipes/tests/fixtures/optim.json"

# A matrix that is decayed, a bias and a one-element tensor that are not.
PARAM_SHAPES = {"layer.weight": [3, 4], "layer.bias": [4], "scale": [1]}
LRS = [0.1, 0.05, 0.2, 0.01, 0.15, 0.08]
# At this step "layer.bias" has no gradient (p.grad is None): optimizers must skip it.
SKIP_STEP, SKIP_NAME = 3, "layer.bias"


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


class Named:
    """Duck-typed module for timm's param_groups_weight_decay (it only calls named_parameters)."""

    def __init__(self, named):
        self.named = named

    def named_parameters(self):
        return iter(self.named)


def make_params(gen):
    return {n: torch.nn.Parameter(torch.randn(s, generator=gen)) for n, s in PARAM_SHAPES.items()}


def grouped(params, weight_decay):
    """timm param groups (no-decay first), with parameter names for the fixture."""
    names = {id(p): n for n, p in params.items()}
    groups = param_groups_weight_decay(Named(list(params.items())), weight_decay=weight_decay)
    return groups, [{"names": [names[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]} for g in groups]


def trajectory(name, kind, config, weight_decay, seed):
    gen = torch.Generator().manual_seed(seed)
    params = make_params(gen)
    init = {n: {"shape": list(p.shape), "data": flat(p)} for n, p in params.items()}
    groups, groups_json = grouped(params, weight_decay)
    if kind == "sgd":
        opt = torch.optim.SGD(groups, lr=LRS[0], foreach=False, **config)
    else:
        opt = torch.optim.AdamW(groups, lr=LRS[0], foreach=False, **config)
    steps = []
    for i, lr in enumerate(LRS):
        grads = {}
        for n, p in params.items():
            if i == SKIP_STEP and n == SKIP_NAME:
                p.grad = None
                continue
            g = torch.randn(p.shape, generator=gen)
            p.grad = g.clone()
            grads[n] = flat(g)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        steps.append({"lr": lr, "grads": grads, "params": {n: flat(p) for n, p in params.items()}})
    state = {}
    for n, p in params.items():
        for k, v in opt.state[p].items():
            state[f"{n}.{k}"] = flat(v) if v.dim() > 0 else [float(v)]
    return {"name": name, "optimizer": kind, "config": config, "groups": groups_json, "init": init,
            "steps": steps, "state": state}


def trajectories():
    sgd = dict(momentum=0.9, weight_decay=5e-4, dampening=0.0)
    return [
        trajectory("sgd_momentum", "sgd", dict(sgd, nesterov=False), 5e-4, 1),
        trajectory("sgd_nesterov", "sgd", dict(sgd, nesterov=True), 5e-4, 2),
        trajectory("sgd_dampening", "sgd", dict(sgd, dampening=0.3, nesterov=False), 5e-4, 3),
        trajectory("sgd_plain", "sgd", dict(momentum=0.0, weight_decay=1e-2, dampening=0.0, nesterov=False), 1e-2, 4),
        trajectory("adamw", "adamw", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05), 0.05, 5),
        trajectory("adamw_betas", "adamw", dict(betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), 0.1, 6),
    ]


def clipping():
    gen = torch.Generator().manual_seed(7)
    cases = []
    for max_norm in [0.5, 2.0, 100.0]:
        params = make_params(gen)
        grads = {}
        for n, p in params.items():
            p.grad = torch.randn(p.shape, generator=gen) * 0.7
            grads[n] = flat(p.grad)
        total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm, foreach=False)
        cases.append({"max_norm": max_norm, "shapes": PARAM_SHAPES, "grads": grads, "total_norm": float(total),
                      "clipped": {n: flat(p.grad) for n, p in params.items()}})
    return cases


def schedules(steps=300):
    cases = [
        ("cosine", dict(t_initial=200, lr_min=0.0, warmup_t=0, warmup_lr_init=0.0, warmup_prefix=False), 0.1),
        ("cosine", dict(t_initial=250, lr_min=1e-5, warmup_t=20, warmup_lr_init=1e-6, warmup_prefix=False), 5e-4),
        ("cosine", dict(t_initial=250, lr_min=1e-5, warmup_t=20, warmup_lr_init=1e-6, warmup_prefix=True), 5e-4),
        ("cosine", dict(t_initial=37, lr_min=2e-3, warmup_t=5, warmup_lr_init=0.0, warmup_prefix=True), 0.05),
        ("step", dict(decay_t=60, decay_rate=0.2, warmup_t=0, warmup_lr_init=0.0), 0.1),
        ("step", dict(decay_t=50, decay_rate=0.5, warmup_t=10, warmup_lr_init=1e-4), 0.1),
    ]
    out = []
    for kind, kwargs, base_lr in cases:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
        cls = CosineLRScheduler if kind == "cosine" else StepLRScheduler
        sched = cls(opt, t_in_epochs=False, **kwargs)
        out.append({"kind": kind, "base_lr": base_lr, "kwargs": kwargs,
                    # repr strings: Rust's correctly rounded `str::parse` gets the exact float64 back.
                    "lrs": [repr(sched._get_lr(t)[0]) for t in range(steps)]})
    return out


def ema(tau, seed, updates=4):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        for n, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    teacher = ModelEmaV3(model, decay=tau, exclude_buffers=True)

    def snapshot(m):
        return {n: flat(t) for n, t in m.state_dict().items() if t.is_floating_point()}

    shapes = {n: list(t.shape) for n, t in model.state_dict().items() if t.is_floating_point()}
    buffers = [n for n, b in model.named_buffers() if b.is_floating_point()]
    init = snapshot(model)
    steps = []
    for _ in range(updates):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            for n, b in model.named_buffers():
                if b.is_floating_point():
                    b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        teacher.update(model)
        steps.append({"student": snapshot(model), "teacher": snapshot(teacher.module)})
    return {"tau": tau, "shapes": shapes, "buffers": buffers, "init": init, "steps": steps}


def param_groups():
    names = {
        "cls_token": [1, 1, 8], "pos_embed": [1, 5, 8], "patch_embed.proj.weight": [8, 3, 2, 2],
        "patch_embed.proj.bias": [8], "blocks.0.norm1.weight": [8], "blocks.0.norm1.bias": [8],
        "blocks.0.attn.qkv.weight": [24, 8], "blocks.0.attn.qkv.bias": [24], "blocks.0.ls1.gamma": [8],
        "blocks.1.mlp.fc1.weight": [16, 8], "blocks.1.mlp.fc1.bias": [16], "norm.weight": [8],
        "head.weight": [10, 8], "head.bias": [10], "fc_norm.scale2d": [1, 8],
    }
    named = [(n, torch.nn.Parameter(torch.zeros(s))) for n, s in names.items()]
    ids = {id(p): n for n, p in named}
    cases = []
    for wd, no_decay in [(0.05, ["pos_embed", "cls_token"]), (1e-4, []), (0.0, ["pos_embed"]),
                         (0.3, ["*.gamma", "fc_norm.*", "blocks.?.attn.*"]), (0.1, ["head.[wx]eight", "pos_[!a]mbed"])]:
        groups = param_groups_weight_decay(Named(named), weight_decay=wd, no_weight_decay_list=no_decay)
        cases.append({"weight_decay": wd, "no_decay": no_decay,
                      "groups": [{"names": [ids[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]}
                                 for g in groups]})
    patterns = ["*", "blocks.*", "*.bias", "blocks.?.norm1.*", "[bh]*", "[!b]*", "head.[a-z]eight", "[", "a[]b",
                "*[.]weight", "pos_embed", "blocks.0.*.bias", "**.gamma", "?", "head.weight?"]
    words = list(names) + ["a[]b", "[", "x"]
    matches = [{"pattern": p, "name": w, "matches": fnmatch.fnmatchcase(w, p)} for p in patterns for w in words]
    # A list, not an object: the order of the parameters is the order of timm's groups.
    return {"params": [[n, s] for n, s in names.items()], "cases": cases, "fnmatch": matches}


def main():
    fixtures = {
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "trajectories": trajectories(),
        "clip": clipping(),
        "schedules": schedules(),
        "ema": [ema(0.9, 8), ema(0.3, 9)],
        "param_groups": param_groups(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixtures, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
