#!/usr/bin/env python3
"""Build the checkpoint fixtures of `multimix-hub` (run once; outputs are committed).

    /work/pyref/bin/python tools/make_hub_fixtures.py      # torch 2.15, timm 1.0.31, safetensors 0.8

Writes under crates/hub/tests/fixtures/:
* `vit_tiny/` and `resnet_tiny/`: `config.json` + `model.safetensors` exactly as timm's
  `timm.models._hub.save_for_hf(model, dir, safe_serialization=True)` writes them (what
  `push_to_hf_hub` uploads), for a `vit_tiny_patch16_224` and a `resnet18` shrunk through model
  arguments. The ResNet ran three forward passes in train mode first, so its BatchNorm buffers
  (`running_mean`, `running_var`, the I64 scalar `num_batches_tracked`) hold non-default values.
* `dtypes.safetensors`: `safetensors.torch.save_file` with metadata `{"format": "pt", ...}` (what
  Hugging Face transformers writes) over every dtype the Rust side reads, an I64 scalar and an
  empty tensor.
* `torch_zip.pth` and `torch_legacy.bin`: `torch.save` of a one-tensor dict in the default zip
  format and in the legacy raw-pickle format: files the Rust reader must refuse by name.
* `expected.json`: for each safetensors file, its `__metadata__`, its (name, dtype, shape) table
  and the values of a few tensors as numpy gives them (`tolist()`, exact).
Seeded (`torch.manual_seed(0)`), so re-running gives the same tensors.
"""
import json, os, shutil, struct

import torch
import timm
from timm.models._hub import save_for_hf
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'crates', 'hub', 'tests', 'fixtures')


def header(path):
    """The parsed JSON header of a safetensors file (read directly, no library)."""
    with open(path, 'rb') as f:
        n, = struct.unpack('<Q', f.read(8))
        return json.loads(f.read(n))


def describe(path, value_names, state_dict):
    """Metadata, (name, dtype, shape) table and some values of the safetensors file at `path`."""
    h = header(path)
    table = sorted((k, v['dtype'], v['shape']) for k, v in h.items() if k != '__metadata__')
    # float64 holds every f16/bf16/f32/f64 value exactly; integers stay integers.
    values = {k: (t.double() if t.is_floating_point() else t).flatten().numpy().tolist()
              for k, t in ((k, state_dict[k].detach()) for k in value_names)}
    return {'metadata': h.get('__metadata__', {}), 'tensors': table, 'values': values}


def save_timm(model, name, model_config, value_names):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    save_for_hf(model, d, model_config=model_config, safe_serialization=True)
    return describe(os.path.join(d, 'model.safetensors'), value_names, model.state_dict())


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    expected = {}

    vit = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8,
                            embed_dim=16, depth=1, num_heads=2, num_classes=5)
    expected['vit_tiny'] = save_timm(vit, 'vit_tiny', {'label_names': ['a', 'b', 'c', 'd', 'e']},
                                     ['head.bias', 'cls_token', 'norm.weight'])

    resnet = timm.create_model('resnet18', pretrained=False, layers=(1, 1, 1, 1), channels=(4, 8, 16, 32),
                               stem_width=4, num_classes=4)
    resnet.train()
    with torch.no_grad():
        for _ in range(3):
            resnet(torch.randn(2, 3, 32, 32))
    resnet.eval()
    label_config = {'label_names': {0: 'cat', 3: 'dog'},
                    'label_descriptions': {'cat': 'a small feline', 'dog': 'a canine'}}
    expected['resnet_tiny'] = save_timm(resnet, 'resnet_tiny', label_config,
                                        ['fc.bias', 'bn1.running_mean', 'bn1.running_var',
                                         'bn1.num_batches_tracked'])

    base = torch.tensor([1.5, -2.25, 3.0e-3, 65504.0, -0.0, 7.0])
    tensors = {
        'f32': base.reshape(2, 3),
        'f64': (base.double() / 3.0).reshape(3, 2),
        'f16': base.half(),
        'bf16': base.bfloat16().reshape(1, 6),
        'i64_scalar': torch.tensor(12345678901, dtype=torch.int64),
        'i32': torch.tensor([-7, 0, 2147483647], dtype=torch.int32),
        'i16': torch.tensor([-32768, 5], dtype=torch.int16),
        'u8': torch.tensor([0, 17, 255], dtype=torch.uint8),
        'empty': torch.zeros(0, 4),
    }
    path = os.path.join(OUT, 'dtypes.safetensors')
    save_file(tensors, path, metadata={'format': 'pt', 'producer': 'tools/make_hub_fixtures.py'})
    expected['dtypes'] = describe(path, sorted(tensors), tensors)

    small = {'w': torch.arange(4, dtype=torch.float32)}
    torch.save(small, os.path.join(OUT, 'torch_zip.pth'))
    torch.save(small, os.path.join(OUT, 'torch_legacy.bin'), _use_new_zipfile_serialization=False)

    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1)
        f.write('\n')
    for root, _, files in os.walk(OUT):
        for name in sorted(files):
            p = os.path.join(root, name)
            print(f'{os.path.relpath(p, OUT)}: {os.path.getsize(p)} bytes')


if __name__ == '__main__':
    main()
