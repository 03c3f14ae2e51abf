"""PyTorch's side of `cargo bench -p multimix-backbones --bench conv`: every convolution shape of
a CIFAR-stem ResNet-18 at batch 250, the forward (`F.conv2d`) and the backward to the input alone
(`torch.autograd.grad(y, x, dy)`, the kernel a constant, as an FGSM backward), best of 3, with the
achieved GFLOP/s, printed as the same markdown table.

    /work/pyref/bin/python tools/bench_conv_torch.py --threads 2 [--batch 250]
"""

import argparse
import time

import torch
import torch.nn.functional as F

# (in channels, out channels, input size, kernel, stride, padding, layers of this shape)
RESNET18_CIFAR = [
    (3, 64, 32, 3, 1, 1, 1),
    (64, 64, 32, 3, 1, 1, 4),
    (64, 128, 32, 3, 2, 1, 1),
    (64, 128, 32, 1, 2, 0, 1),
    (128, 128, 16, 3, 1, 1, 3),
    (128, 256, 16, 3, 2, 1, 1),
    (128, 256, 16, 1, 2, 0, 1),
    (256, 256, 8, 3, 1, 1, 3),
    (256, 512, 8, 3, 2, 1, 1),
    (256, 512, 8, 1, 2, 0, 1),
    (512, 512, 4, 3, 1, 1, 3),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch
    print("| C | O | size | k | s | layers | forward ms | GFLOP/s | input gradient ms | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    forward = backward = flops = 0.0
    for c, o, h, k, s, p, count in RESNET18_CIFAR:
        x = torch.randn(b, c, h, h, requires_grad=True)
        w = torch.randn(o, c, k, k) * 0.1
        tf = tb = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            y = F.conv2d(x, w, stride=s, padding=p)
            tf = min(tf, time.perf_counter() - t0)
            dy = torch.randn_like(y)
            t0 = time.perf_counter()
            (dx,) = torch.autograd.grad(y, x, dy)
            tb = min(tb, time.perf_counter() - t0)
            assert dx.shape == x.shape
        oh = (h + 2 * p - k) // s + 1
        f = 2.0 * b * o * oh * oh * c * k * k
        print(
            f"| {c} | {o} | {h}×{h} | {k} | {s} | {count} | {tf * 1e3:.2f} | {f / tf / 1e9:.1f} "
            f"| {tb * 1e3:.2f} | {f / tb / 1e9:.1f} |"
        )
        forward += tf * count
        backward += tb * count
        flops += f * count
    print(
        f"\nbatch {b}: all layers forward {forward * 1e3:.1f} ms ({flops / forward / 1e9:.1f} GFLOP/s), "
        f"input gradient {backward * 1e3:.1f} ms ({flops / backward / 1e9:.1f} GFLOP/s)"
    )


if __name__ == "__main__":
    main()
