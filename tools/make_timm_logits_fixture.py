"""timm's logits for the tiny timm-exported ViT repository of the hub fixtures.

Loads `crates/hub/tests/fixtures/vit_tiny/` (config.json + model.safetensors, written by timm's
`save_for_hf` in make_hub_fixtures.py) into timm, feeds a deterministic image batch in [0, 1]
normalized with the config's mean/std, and writes the logits to
`tests/fixtures/timm_vit_tiny_logits.json`. The Rust test builds the same batch from the same
formula: x[b, c, h, w] = ((7b + 13c + 3h + 5w) mod 17) / 16.

Run: /work/pyref/bin/python tools/make_timm_logits_fixture.py
"""
import json
import os

import timm
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.join(ROOT, 'crates/hub/tests/fixtures/vit_tiny')
OUT = os.path.join(ROOT, 'tests/fixtures/timm_vit_tiny_logits.json')


def main():
    with open(os.path.join(REPO, 'config.json')) as f:
        config = json.load(f)
    model = timm.create_model(config['architecture'], pretrained=False, **config['model_args'])
    model.load_state_dict(load_file(os.path.join(REPO, 'model.safetensors')))
    model.eval()
    c, h, w = config['pretrained_cfg']['input_size']
    b = 2
    idx = torch.meshgrid(torch.arange(b), torch.arange(c), torch.arange(h), torch.arange(w), indexing='ij')
    x = ((7 * idx[0] + 13 * idx[1] + 3 * idx[2] + 5 * idx[3]) % 17).float() / 16
    mean = torch.tensor(config['pretrained_cfg']['mean']).view(1, c, 1, 1)
    std = torch.tensor(config['pretrained_cfg']['std']).view(1, c, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std)
    with open(OUT, 'w') as f:
        json.dump({'timm': timm.__version__, 'torch': torch.__version__, 'shape': [b, c, h, w],
                   'logits': logits.tolist()}, f, indent=1)


if __name__ == '__main__':
    main()
