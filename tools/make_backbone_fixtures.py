"""timm reference fixtures for the backbones of `multimix_backbones` (ViT, ResNet, PreAct-ResNet).

Re-run from the repository root (fixed seed, deterministic output; timm 1.0.31, torch 2.15):

    /work/pyref/bin/python tools/make_backbone_fixtures.py

Writes crates/backbones/tests/fixtures/parity_<case>.safetensors, one file per model:

    w.<name>          the state dict in timm's names (random weights, float32)
    x                 an input batch, as the backbone sees it (already normalized)
    gy                weights of the scalar s = Σ gy ⊙ logits
    features          timm forward_features(x), eval mode
    pre_logits        timm forward_head(features, pre_logits=True)
    logits            timm forward(x)
    grad_x            ∂s/∂x (tests the backward of every layer)
    train.logits      (BatchNorm models) forward(x) in training mode: batch statistics
    train.<buffer>    (BatchNorm models) running_mean / running_var / num_batches_tracked after it

The metadata holds `config`: the multimix `{"architecture", "args"}` that builds the same model.
References are computed in float64
from the stored float32 weights and inputs, then stored as float32.

And timm checkpoint directories as timm's `save_for_hf` writes them (what `push_to_hf_hub`
uploads), crates/backbones/tests/fixtures/timm_{vit,resnet18}/: `config.json`, `model.safetensors`,
plus `reference.safetensors` with `images` in [0, 1] and timm's `logits`, `pre_logits` and
`features` for them (normalized with the config's mean and std, eval mode).

And crates/backbones/tests/fixtures/timm_presets.json: for full-size timm models, the
`config.json` timm writes and the state dict's names, shapes and dtypes (no weights), so the
registered presets can be checked to hold exactly timm's tensors.

And crates/backbones/tests/fixtures/adapt_input_conv.safetensors: timm's `adapt_input_conv` of
a random RGB kernel `weight` to 1, 2 and 5 input channels (`to1`, `to2`, `to5`).

Also writes crates/backbones/tests/fixtures/resample.safetensors: timm's
`resample_abs_pos_embed` (bicubic, align_corners=False) for down- and upsampling, with and without
antialiasing, with and without a prefix token.
"""

import json
import tempfile
import zlib
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.layers import BatchNormAct2d, create_conv2d, resample_abs_pos_embed
import timm
from timm.models._hub import save_config_for_hf, save_for_hf
from timm.models._manipulate import adapt_input_conv
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/backbones/tests/fixtures"


def randomize(model, gen):
    """Random weights everywhere (timm's init leaves zeros and ones that would hide bugs)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 3:  # class token, position embeddings
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def reference(model, x, gy, out):
    """Eval-mode features, pre_logits, logits and input gradient in float64."""
    m = model.double().eval()
    xd = x.double().requires_grad_(True)
    features = m.forward_features(xd)
    pre = m.forward_head(features, pre_logits=True)
    logits = m.forward_head(features)
    (logits * gy.double()).sum().backward()
    out.update(features=f32(features), pre_logits=f32(pre), logits=f32(logits), grad_x=f32(xd.grad))


def train_reference(model, x, out):
    """Training-mode logits (batch statistics) and the BatchNorm buffers after that step."""
    m = model.double().train()
    with torch.no_grad():
        out["train.logits"] = f32(m(x.double()))
    for name, b in m.named_buffers():
        out[f"train.{name}"] = b.detach().clone() if b.dtype == torch.int64 else f32(b)


def write_case(case, model, x, config, train=False, weights=None):
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    out = {}
    sd = weights if weights is not None else model.state_dict()
    for k, v in sd.items():
        out[f"w.{k}"] = v.detach().clone() if v.dtype == torch.int64 else f32(v)
    out["x"] = f32(x)
    with torch.no_grad():
        n_cls = model.double().eval()(x.double()).shape[-1]
    gy = torch.randn((x.shape[0], n_cls), generator=gen)
    out["gy"] = f32(gy)
    reference(model, x, gy, out)
    if train:
        train_reference(model, x, out)
    meta = {"config": json.dumps(config)}
    path = OUT / f"parity_{case}.safetensors"
    save_file(out, str(path), metadata=meta)
    size = path.stat().st_size
    print(f"{path.relative_to(ROOT)}: {len(out)} tensors, {size / 1024:.0f} KiB")


def vit_case(case, gen, **kw):
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    args.update(kw)
    model = VisionTransformer(**args)
    randomize(model, gen)
    x = torch.randn((3, 3, args["img_size"], args["img_size"]), generator=gen)
    config_args = {k: v for k, v in args.items()}
    return model, x, {"architecture": "vit_tiny_patch16_224", "args": config_args}


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    # ViT with class token (global_pool "token").
    model, x, cfg = vit_case("vit_token", gen)
    write_case("vit_token", model, x, cfg)

    # ViT with avg pooling: fc_norm after pooling, class token excluded from the mean.
    model, x, cfg = vit_case("vit_avg", gen, global_pool="avg", qkv_bias=False)
    write_case("vit_avg", model, x, cfg)

    # A 224-style checkpoint (patch 16, 14×14 grid) used at 64 px: timm's checkpoint filter
    # resamples the position embeddings (bicubic, antialias=True) to the 4×4 grid.
    src, _, _ = vit_case("vit_224", gen, img_size=224, patch_size=16)
    dst = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    dst.load_state_dict(checkpoint_filter_fn(dict(sd), dst))
    x = torch.randn((2, 3, 64, 64), generator=gen)
    cfg = {
        "architecture": "vit_tiny_patch16_224",
        "args": dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5),
    }
    write_case("vit_224_at_64", dst, x, cfg, weights=sd)

    # ResNet-18 layout at reduced stage widths (timm's stem is always 64 wide), ImageNet stem (7×7/2 conv, 3×3/2 max pool).
    channels = [8, 16, 24, 32]
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=5, channels=channels)
    randomize(model, gen)
    x = torch.randn((3, 3, 48, 48), generator=gen)
    cfg = {"architecture": "resnet18", "args": dict(channels=channels, num_classes=5, img_size=48)}
    write_case("resnet18", model, x, cfg, train=True)

    # ResNet-50 layout (bottlenecks [3, 4, 6, 3]) at reduced width.
    channels = [4, 8, 12, 16]
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=5, channels=channels)
    randomize(model, gen)
    x = torch.randn((2, 3, 48, 48), generator=gen)
    cfg = {"architecture": "resnet50", "args": dict(channels=channels, num_classes=5, img_size=48)}
    write_case("resnet50", model, x, cfg, train=True)

    # ResNet-18 with the CIFAR stem: timm's ResNet with conv1 replaced by a 3×3/1 conv, no pool.
    channels = [8, 16, 24, 32]
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=5, channels=channels)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    randomize(model, gen)
    x = torch.randn((4, 3, 16, 16), generator=gen)
    cfg = {"architecture": "resnet18_cifar", "args": dict(channels=channels, num_classes=5, img_size=16)}
    write_case("resnet18_cifar", model, x, cfg, train=True)

    # PreAct-ResNet-18: timm's resnetv2_18 (PreActBasic, BatchNormAct2d) with the CIFAR stem.
    channels = [8, 16, 24, 32]
    model = ResNetV2(
        layers=[2, 2, 2, 2], channels=channels, num_classes=5, stem_chs=8, basic=True, bottle_ratio=1.0,
        conv_layer=create_conv2d, norm_layer=BatchNormAct2d,
    )
    model.stem.conv = nn.Conv2d(3, 8, 3, stride=1, padding=1, bias=False)
    model.stem.pool = nn.Identity()
    randomize(model, gen)
    x = torch.randn((4, 3, 16, 16), generator=gen)
    cfg = {"architecture": "preact_resnet18", "args": dict(channels=channels, stem_chs=8, num_classes=5, img_size=16)}
    write_case("preact_resnet18", model, x, cfg, train=True)

    # timm's resnetv2_18 layout with its own stem (7×7/2 conv, 3×3/2 max pool, no stem norm).
    model = ResNetV2(
        layers=[2, 2, 2, 2], channels=channels, num_classes=5, stem_chs=8, basic=True, bottle_ratio=1.0,
        conv_layer=create_conv2d, norm_layer=BatchNormAct2d,
    )
    own = torch.Generator().manual_seed(zlib.crc32(b"resnetv2_18"))  # keeps `gen`'s later draws
    randomize(model, own)
    x = torch.randn((2, 3, 40, 40), generator=own)
    cfg = {"architecture": "resnetv2_18", "args": dict(channels=channels, stem_chs=8, num_classes=5, img_size=40)}
    write_case("resnetv2_18", model, x, cfg, train=True)

    # timm checkpoint directories.
    # A CNN takes any image size: the ResNet's reference images are 48 px, below its 224.
    for name, arch, kwargs, size in [
        ("timm_vit", "vit_tiny_patch16_224",
         dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5), 16),
        ("timm_resnet18", "resnet18", dict(num_classes=5, channels=(8, 16, 24, 32)), 48),
    ]:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        randomize(model, gen)
        model.eval()
        directory = OUT / name
        save_for_hf(model, str(directory), safe_serialization=True)
        cfg = json.loads((directory / "config.json").read_text())
        c = cfg["pretrained_cfg"]["input_size"][0]
        images = torch.rand((2, c, size, size), generator=gen)
        mean = torch.tensor(cfg["pretrained_cfg"]["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(cfg["pretrained_cfg"]["std"]).view(1, -1, 1, 1)
        m = model.double()
        with torch.no_grad():
            features = m.forward_features(((images - mean) / std).double())
            ref = dict(images=images, features=f32(features),
                       pre_logits=f32(m.forward_head(features, pre_logits=True)),
                       logits=f32(m.forward_head(features)))
        save_file(ref, str(directory / "reference.safetensors"))
        print(f"{directory.relative_to(ROOT)}: model_args {cfg.get('model_args')}")

    # Full-size presets: timm's config.json and state-dict table.
    tables = {}
    for arch in ["vit_tiny_patch16_224", "resnet18", "resnet34", "resnet50", "resnetv2_18"]:
        model = timm.create_model(arch, pretrained=False)
        with tempfile.TemporaryDirectory() as tmp:
            save_config_for_hf(model, f"{tmp}/config.json")
            config = json.loads(Path(f"{tmp}/config.json").read_text())
        tensors = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
        tables[arch] = {"config": config, "tensors": tensors}
    path = OUT / "timm_presets.json"
    path.write_text(json.dumps(tables, indent=1, sort_keys=True) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")

    # Position-embedding resampling, timm's function.
    out = {}
    for prefix in (0, 1):
        posemb = torch.randn((1, prefix + 14 * 14, 6), generator=gen)
        out[f"p{prefix}.posemb"] = posemb
        for new in (4, 20):
            for aa in (False, True):
                r = resample_abs_pos_embed(posemb.double(), [new, new], num_prefix_tokens=prefix,
                                           interpolation="bicubic", antialias=aa)
                out[f"p{prefix}.to{new}.aa{int(aa)}"] = f32(r)
    path = OUT / "resample.safetensors"
    save_file(out, str(path))
    print(f"{path.relative_to(ROOT)}: {len(out)} tensors, {path.stat().st_size / 1024:.0f} KiB")

    # First-convolution adaptation to other input-channel counts, timm's function.
    own = torch.Generator().manual_seed(zlib.crc32(b"adapt_input_conv"))
    weight = torch.randn((4, 3, 3, 3), generator=own)
    out = {"weight": weight}
    for c in (1, 2, 5):
        out[f"to{c}"] = f32(adapt_input_conv(c, weight.clone()))
    path = OUT / "adapt_input_conv.safetensors"
    save_file(out, str(path))
    print(f"{path.relative_to(ROOT)}: {len(out)} tensors, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
