"""The PyTorch + timm side of `multimix bench`: the same training steps (or FGSM batches), the
same models, shapes, batch, threads, optimizer and mixing methods, timed the same way, written
in the same JSON schema, so `tools/bench_compare.py` can put the two side by side.

Run with the reference environment (torch 2.15, timm 1.0.31):

    /work/pyref/bin/python tools/bench_torch.py --model vit_tiny_patch4_32 --method none,multimix \
        --steps 5 --warmup 2 --threads 2 --json torch.json
    /work/pyref/bin/python tools/bench_torch.py --fgsm --model resnet18_cifar --steps 4

Models (multimix preset names, built with timm as a peer would):
  vit_mini_patch7_28  timm VisionTransformer with the preset's arguments (28x28x1, patch 7,
                      width 96, depth 4, 3 heads, MLP ratio 2, no class token, tokens normed
                      then averaged)
  vit_tiny_patch4_32  timm vit_tiny_patch16_224(img_size=32, patch_size=4, num_classes=10)
  resnet18_cifar      timm resnet18(num_classes=10) with the CIFAR stem: conv1 = 3x3 stride-1
                      conv, maxpool = Identity

Methods, written out as in /work/shared/METHOD.md (alpha = 1 for all; n = --mix-n):
  none            nn.CrossEntropyLoss
  mixup, cutmix, mixup-cutmix
                  timm.data.Mixup (flip pairing, one lambda per batch) + SoftTargetCrossEntropy
  manifold-mixup  a mix point drawn uniformly (ViT: the input or the input of a block;
                  ResNet: the input or the output of stages 1..3), mixed by a forward hook
  multimix        Lambda ~ Dir(1) [n, b]; loss H(Lambda Y, Lambda g(Z)) + the clean term
  dense-multimix  attention softmax(Z u), u = mean of the example's positions (detached);
                  xi_kij = lambda_ki a_ij normalized over the batch; per-position logits mixed;
                  loss over the n*r positions + the clean term
The clean (unmixed) cross-entropy term is multimix's training default (mix.clean_loss = true).

Optimizers as multimix's: AdamW lr 2e-3, weight decay 0.05 (timm's param_groups_weight_decay:
no decay on biases, norms and no_weight_decay()) or SGD lr 0.05, momentum 0.9, weight decay 5e-4.

`--flops-fixture PATH` instead writes the forward FLOPs per image that
`torch.utils.flop_counter.FlopCounterMode` counts for each preset (the reference of
`multimix_recipes::bench::forward_flops`; crates/recipes/tests/fixtures/forward_flops.json).
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_weight_decay

SCHEMA = "multimix-bench/1"
METHODS = ["none", "mixup", "cutmix", "mixup-cutmix", "manifold-mixup", "multimix", "dense-multimix"]
DEFAULT_METHODS = "none,mixup,manifold-mixup,multimix,dense-multimix"
DENSE_EPS = 1e-8
FGSM_EPS = 8 / 255
INCEPTION = ([0.5] * 3, [0.5] * 3)
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])


def vit_mini_patch7_28():
    return VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10,
                             global_pool="avg", class_token=False, fc_norm=False, mlp_ratio=2.0,
                             embed_dim=96, depth=4, num_heads=3)


def resnet_cifar(name):
    def build():
        m = timm.create_model(name, pretrained=False, num_classes=10)
        m.conv1 = nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
        return m
    return build


def timm_model(name, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, **kwargs)


# name -> (builder, (C, H, W), normalization)
MODELS = {
    "vit_mini_patch7_28": (vit_mini_patch7_28, (1, 28, 28), ([0.5], [0.5])),
    "vit_tiny_patch4_32": (timm_model("vit_tiny_patch16_224", img_size=32, patch_size=4,
                                      num_classes=10), (3, 32, 32), INCEPTION),
    "resnet18_cifar": (resnet_cifar("resnet18"), (3, 32, 32), CIFAR),
    # Only for --flops-fixture: the ImageNet presets at 224.
    "vit_tiny_patch16_224": (timm_model("vit_tiny_patch16_224"), (3, 224, 224), INCEPTION),
    "resnet18": (timm_model("resnet18"), (3, 224, 224), IMAGENET),
    "resnet50": (timm_model("resnet50"), (3, 224, 224), IMAGENET),
}
BENCH_MODELS = ["vit_mini_patch7_28", "vit_tiny_patch4_32", "resnet18_cifar"]


def die(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- machine, memory, time

def cpuinfo():
    """(first 'model name', first 'cpu MHz', AVX2 and FMA present) from /proc/cpuinfo."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    mhz = float(fields["cpu MHz"]) if "cpu MHz" in fields else None
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", "unknown"), mhz, {"avx2", "fma"} <= flags


def machine(threads):
    name, mhz, avx2_fma = cpuinfo()
    peak = threads * 32 * mhz / 1e3 if (mhz and avx2_fma) else None
    return {
        "cpu": name,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "clock_mhz": mhz,
        "avx2_fma": avx2_fma,
        "peak_gflops": peak,
        "peak_assumption": "threads x 32 FP32 FLOP/cycle (2 x 256-bit FMA per core, AVX2+FMA) "
                           "x the first 'cpu MHz' of /proc/cpuinfo (under a VM: the reported "
                           "clock; boost may be higher)",
    }


def status_bytes(key):
    """A `VmHWM`/`VmRSS` line of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset VmHWM to the current RSS (write 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    peak = status_bytes("VmHWM")
    if peak is None:  # no procfs: the lifetime peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_steps(step, warmup, steps):
    """Wall and CPU (user + system) seconds of each timed step, after the warm-ups."""
    wall, cpu, out = [], [], None
    for i in range(warmup + steps):
        w0, c0 = time.perf_counter(), cpu_seconds()
        out = step()
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(cpu_seconds() - c0)
    return wall, cpu, out


# ---------------------------------------------------------------- models and FLOPs

def build(name, seed):
    torch.manual_seed(seed)
    builder, shape, (mean, std) = MODELS[name]
    model = builder()
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return model, shape, mean, std


def forward_flops(model, shape):
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops()


def write_flops_fixture(path):
    counts = {}
    for name in MODELS:
        model, shape, _, _ = build(name, 0)
        counts[name] = forward_flops(model, shape)
        print(f"{name}: {counts[name] / 1e6:.1f} MFLOP per image")
    write_json(path, counts)


def write_json(path, value):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- training losses

def soft_ce(logits, targets):
    """H(Y, L) = -mean over rows of sum_c Y log_softmax(L)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def is_vit(model):
    return isinstance(model, VisionTransformer)


def dense_embeddings(model, features):
    """[b, r, d]: ViT patch tokens (no prefix tokens, fc_norm if any), a CNN's map flattened."""
    if is_vit(model):
        return model.fc_norm(features[:, model.num_prefix_tokens:])
    return features.flatten(2).transpose(1, 2)


def mix_points(model):
    """Manifold mixup's modules whose input (ViT blocks) or output (ResNet stages) is mixed."""
    if is_vit(model):
        return [(block, "pre") for block in model.blocks]
    return [(model.layer1, "post"), (model.layer2, "post"), (model.layer3, "post")]


class Loss:
    """The training loss of each method on one batch (x already normalized)."""

    def __init__(self, model, method, num_classes, n, batch):
        self.model, self.method, self.c, self.n = model, method, num_classes, n
        self.ce = nn.CrossEntropyLoss()
        if method in ("mixup", "cutmix", "mixup-cutmix"):
            self.mixup = Mixup(mixup_alpha=0.0 if method == "cutmix" else 1.0,
                               cutmix_alpha=0.0 if method == "mixup" else 1.0,
                               prob=1.0, switch_prob=0.5, mode="batch", label_smoothing=0.0,
                               num_classes=num_classes)
            self.soft = SoftTargetCrossEntropy()
        self.points = mix_points(model)
        self.dirichlet = torch.distributions.Dirichlet(torch.ones(batch))
        self.beta = torch.distributions.Beta(1.0, 1.0)

    def __call__(self, x, y, normalize):
        model, method = self.model, self.method
        if method == "none":
            return self.ce(model(normalize(x)), y)
        if method in ("mixup", "cutmix", "mixup-cutmix"):
            xm, ym = self.mixup(x, y)
            return self.soft(model(normalize(xm)), ym)
        onehot = F.one_hot(y, self.c).float()
        if method == "manifold-mixup":
            return self.manifold(normalize(x), onehot)
        features = model.forward_features(normalize(x))
        logits = model.forward_head(features)
        lam = self.dirichlet.sample((self.n,))  # [n, b]
        if method == "multimix":
            loss = soft_ce(lam @ logits, lam @ onehot)
        else:
            loss = self.dense(features, lam, onehot)
        return loss + self.ce(logits, y)

    def manifold(self, x, onehot):
        k = int(torch.randint(len(self.points) + 1, ()))
        lam = float(self.beta.sample())
        perm = torch.randperm(x.shape[0])
        mix = lambda h: lam * h + (1 - lam) * h[perm]  # noqa: E731
        if k == 0:
            out = self.model(mix(x))
        else:
            module, kind = self.points[k - 1]
            if kind == "pre":
                handle = module.register_forward_pre_hook(lambda _m, args: (mix(args[0]),))
            else:
                handle = module.register_forward_hook(lambda _m, _i, out: mix(out))
            try:
                out = self.model(x)
            finally:
                handle.remove()
        return soft_ce(out, lam * onehot + (1 - lam) * onehot[perm])

    def dense(self, features, lam, onehot):
        z = dense_embeddings(self.model, features)  # [b, r, d]
        zd = z.detach()
        attn = torch.softmax(torch.einsum("brd,bd->br", zd, zd.mean(1)), dim=-1)  # [b, r]
        xi = lam[:, :, None] * attn[None]  # [n, b, r]
        xi = xi / (xi.sum(1, keepdim=True) + DENSE_EPS)
        dense_logits = self.model.get_classifier()(z)  # [b, r, c]
        mixed = torch.einsum("nbr,brc->nrc", xi, dense_logits)
        targets = torch.einsum("nbr,bc->nrc", xi, onehot)
        return soft_ce(mixed.reshape(-1, self.c), targets.reshape(-1, self.c))


def optimizer(model, name):
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if name == "adamw":
        groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=no_decay)
        return torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    groups = param_groups_weight_decay(model, 5e-4, no_weight_decay_list=no_decay)
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


# ---------------------------------------------------------------- one configuration

def run_config(args, name, method, conventions):
    reset_ok = reset_peak_rss()
    rss_start = status_bytes("VmRSS")
    model, shape, mean, std = build(name, args.seed)
    num_classes = model.num_classes
    x = torch.rand(args.batch_size, *shape)
    y = torch.arange(args.batch_size) % num_classes
    normalize = lambda t: (t - mean) / std  # noqa: E731
    if method is None:  # FGSM: forward, input gradient, forward on the adversarial batch
        model.eval()

        def step():
            xg = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(normalize(xg)), y)
            (grad,) = torch.autograd.grad(loss, xg)
            adv = (x + FGSM_EPS * grad.sign()).clamp(0, 1)
            with torch.no_grad():
                return (model(normalize(adv)).argmax(1) == y).float().mean().item()
    else:
        model.train()
        loss_fn = Loss(model, method, num_classes, args.mix_n, args.batch_size)
        opt = optimizer(model, args.opt)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x, y, normalize)
            loss.backward()
            opt.step()
            return loss.item()
    wall, cpu, last = time_steps(step, args.warmup, args.steps)
    peak = peak_rss()
    fwd = forward_flops(model, shape) * args.batch_size  # after timing: no extra warm-up
    return record(args, name, method, shape, sum(p.numel() for p in model.parameters()), fwd,
                  wall, cpu, last, rss_start, peak, reset_ok, conventions)


def record(args, name, method, shape, params, fwd, wall, cpu, last, rss_start, peak, reset_ok,
           conventions):
    med = statistics.median(wall)
    step_flops = 3 * fwd
    peak_gflops = conventions["peak_gflops"]
    achieved = step_flops / med / 1e9
    return {
        "model": name,
        "method": method,
        "mode": "fgsm" if method is None else "train",
        "input": list(shape),
        "batch_size": args.batch_size,
        "params": params,
        "optimizer": None if method is None else args.opt,
        "mix_n": args.mix_n,
        "warmup": args.warmup,
        "steps": args.steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "median_s": med,
        "min_s": min(wall),
        "max_s": max(wall),
        "cpu_median_s": statistics.median(cpu),
        "images_per_s": args.batch_size / med,
        "rss_start_bytes": rss_start,
        "peak_rss_bytes": peak,
        "peak_rss_reset": reset_ok,
        "forward_gflop": fwd / 1e9,
        "step_gflop": step_flops / 1e9,
        "achieved_gflops": achieved,
        "peak_fraction": achieved / peak_gflops if peak_gflops else None,
        "last_loss" if method else "fgsm_accuracy": last,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_mini_patch7_28",
                   help=f"comma-separated, of: {', '.join(BENCH_MODELS)}")
    p.add_argument("--method", default=None,
                   help=f"comma-separated, of: {', '.join(METHODS)} (default {DEFAULT_METHODS})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--mix-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fgsm", action="store_true",
                   help="time FGSM batches (forward, input gradient, forward) in eval mode")
    p.add_argument("--json", help="write the results here (atomically)")
    p.add_argument("--flops-fixture", help="write torch's forward FLOPs per image and exit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.flops_fixture:
        write_flops_fixture(args.flops_fixture)
        return
    models = args.model.split(",")
    for m in models:
        if m not in BENCH_MODELS:
            die(f"unknown --model `{m}`; expected one of: {', '.join(BENCH_MODELS)}")
    if args.fgsm and args.method:
        die("--method does not apply to --fgsm (FGSM runs the model in eval mode)")
    methods = [None] if args.fgsm else (args.method or DEFAULT_METHODS).split(",")
    for m in methods:
        if m is not None and m not in METHODS:
            die(f"unknown --method `{m}`; expected one of: {', '.join(METHODS)}")
    if args.steps < 1 or args.batch_size < 1 or args.warmup < 0 or args.mix_n < 1:
        die("--steps, --batch-size and --mix-n must be at least 1, --warmup at least 0")
    conventions = machine(args.threads)
    out = {
        "schema": SCHEMA,
        "framework": "pytorch",
        "framework_version": f"torch {torch.__version__}, timm {timm.__version__}",
        "device": "cpu",
        "machine": conventions,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "RAYON_NUM_THREADS", "CANDLE_NUM_THREADS",
                                           "GLIBC_TUNABLES") if k in os.environ},
        "results": [],
    }
    for name in models:
        for method in methods:
            r = run_config(args, name, method, conventions)
            out["results"].append(r)
            print(f"{name} {method or 'fgsm'}: median {r['median_s']:.3f} s "
                  f"({r['min_s']:.3f}-{r['max_s']:.3f}), {r['images_per_s']:.1f} img/s, "
                  f"{r['achieved_gflops']:.1f} GFLOP/s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB",
                  flush=True)
            if args.json:
                write_json(args.json, out)


if __name__ == "__main__":
    main()
