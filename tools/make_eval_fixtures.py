#!/usr/bin/env python3
"""Reference fixtures for `multimix-eval`'s attacks, OOD detectors and embedding geometry.

Writes, under `crates/eval/tests/fixtures/`:

* `attacks.safetensors`: a tiny timm ViT (`VisionTransformer(img_size=8, patch_size=4,
  in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, global_pool="avg",
  class_token=False, fc_norm=False)`, the same model as the project's `vit_mini_patch7_28` with
  those arguments, tensor names as timm's `state_dict`) with its normalization (mean = std = 0.5)
  inside, a batch of images in [0, 1] with labels, and
  - `fgsm.eps{k}`: `torchattacks.FGSM(model, eps=k/255)(images, labels)`;
  - `pgd.start`, `pgd.adv`: `torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=10,
    random_start=True)`; its uniform start is re-drawn from the same torch seed and stored as the
    offset `pgd.start` (so the Rust side starts from `clamp(x + start, 0, 1)` too), and a plain
    torch PGD from that start is checked to give the same images;
  - `pgd3.*`: the same with eps=4/255, alpha=1/255, steps=3;
  - `odin.scores`, `odin.x_hat`: ODIN (Liang et al. 2018) as pytorch-ood's `ODIN` /
    `odin_preprocessing` computes it (`x_hat = x - eps * sign(grad_x CE(f(x)/T, argmax))`,
    no clamp; score = max softmax(f(x_hat)/T)), T = 1000, eps = 0.0014, on the batch and on
    a batch of noise images;
  - `logits`, `features`: the model's logits and penultimate (pooled) features of the batch.
* `mahalanobis.safetensors`: the Mahalanobis detector with Lee et al. (2018)'s input
  pre-processing as pytorch-ood 0.4's `MahalanobisODIN` computes it, on the same tiny ViT:
  `train.images`/`train.labels` (60 images) to fit on; for eps in {0.002, 0.01} and the batch
  and noise images of `attacks.safetensors`, `eps{k}.{images,noise}.x_hat` =
  `MahalanobisODIN(encoder, eps)._odin_preprocess(x)` (`x' = x - eps * sign(grad_x L)`, L half
  the squared Mahalanobis distance to the closest class mean, no clamp) and `.scores` = the
  OpenOOD-convention Mahalanobis score (sklearn `EmpiricalCovariance`, as in `detectors.json`)
  of the features of `x'`. The detector's precision is replaced by sklearn's `precision_` (a
  pseudo-inverse) before pre-processing: a ViT's pooled features come out of a LayerNorm and lie
  on a hyperplane, so their covariance is singular, and pytorch-ood's own `inv(scatter + 1e-6 I)`
  puts a 1e6 weight on the normal of that hyperplane, where the features differ only by float
  noise; the project follows OpenOOD's pseudo-inverse there too.
* `detectors.json`: logit scores (MSP, MaxLogit, Energy with T = 1 and T = 2, as pytorch-ood's
  `MaxSoftmax`, `MaxLogit`, `EnergyBased` compute them, negated to "higher = more
  in-distribution"), Mahalanobis (class means and the shared covariance `sklearn.covariance.
  EmpiricalCovariance().fit(z - mu_y)`, precision = its `precision_` (a pseudo-inverse);
  score = -min_c (z - mu_c)^T P (z - mu_c), as OpenOOD's `MDSPostprocessor`), KNN (OpenOOD's
  `KNNPostprocessor`: L2-normalized features, `x / (||x|| + 1e-10)`, score = minus the Euclidean
  distance to the K-th nearest training feature by `sklearn.neighbors.NearestNeighbors`),
  alignment and uniformity (Wang & Isola 2020, their `align_loss(alpha=2)` over same-class pairs
  and `uniform_loss(t=2)` with `torch.pdist`, on L2-normalized embeddings) and the first two
  principal components (`sklearn.decomposition.PCA(2)`).

Run from the repository root with

    /work/pyref/bin/python tools/make_eval_fixtures.py

(needs torchattacks and pytorch-ood: `/work/pyref/bin/pip install torchattacks pytorch-ood`).
Deterministic (fixed seeds).
"""

import json
from pathlib import Path

import numpy as np
import sklearn
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks
from safetensors.torch import save_file
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

OUT = Path(__file__).resolve().parent.parent / "crates" / "eval" / "tests" / "fixtures"


class Normalized(nn.Module):
    """A timm model taking images in [0, 1], normalization inside (as `multimix_backbones::Model`)."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def tiny_vit():
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2,
        mlp_ratio=2.0, global_pool="avg", class_token=False, fc_norm=False)
    # timm's init leaves tiny weights (trunc-normal .02) and a zero head bias: spread them so the
    # logits and the input gradients are far from ties.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1 and "pos_embed" not in name:
                p.normal_(0.0, 0.4)
        net.head.weight.normal_(0.0, 1.0)
    return net.eval()


def plain_pgd(model, images, labels, eps, alpha, steps, start):
    """PGD written out (torchattacks' `PGD.forward`), from an explicit start offset."""
    adv = torch.clamp(images + start, 0, 1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        cost = nn.CrossEntropyLoss()(model(adv), labels)
        grad = torch.autograd.grad(cost, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - images, min=-eps, max=eps)
        adv = torch.clamp(images + delta, 0, 1).detach()
    return adv


def torchattacks_pgd(model, images, labels, eps, alpha, steps, seed):
    """torchattacks' PGD with its random start, and the start offset it drew."""
    torch.manual_seed(seed)
    start = torch.empty_like(images).uniform_(-eps, eps)
    torch.manual_seed(seed)
    adv = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(images, labels)
    assert torch.equal(adv, plain_pgd(model, images, labels, eps, alpha, steps, start))
    return start, adv


def odin(model, x, temperature=1000.0, eps=0.0014):
    """pytorch-ood `odin_preprocessing` + `ODIN.predict` (scores negated back to max softmax)."""
    x = x.clone().requires_grad_(True)
    logits = model(x) / temperature
    y = logits.max(dim=1).indices
    F.cross_entropy(logits, y).backward()
    x_hat = x - eps * torch.sign(x.grad.detach())
    with torch.no_grad():
        scores = F.softmax(model(x_hat) / temperature, dim=1).max(dim=1).values
    return x_hat.detach(), scores


def attacks():
    model = Normalized(tiny_vit(), [0.5], [0.5]).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(12, 1, 8, 8, generator=g)
    images[0, 0, :2] = 0.0  # saturated pixels exercise the clamp to [0, 1]
    images[1, 0, :2] = 1.0
    labels = torch.randint(0, 3, (12,), generator=g)
    tensors = {"net." + k: v.contiguous() for k, v in model.net.state_dict().items()}
    tensors["images"] = images
    tensors["labels"] = labels.to(torch.int64)
    with torch.no_grad():
        tensors["logits"] = model(images)
        feats = model.net.forward_features((images - 0.5) / 0.5)
        tensors["features"] = model.net.forward_head(feats, pre_logits=True)
    for k in (1, 2, 8):
        tensors[f"fgsm.eps{k}"] = torchattacks.FGSM(model, eps=k / 255)(images, labels)
    # the sign of the input gradient, to tell tied (zero) entries from the others
    x = images.clone().requires_grad_(True)
    nn.CrossEntropyLoss()(model(x), labels).backward()
    tensors["grad"] = x.grad.detach()
    tensors["pgd.start"], tensors["pgd.adv"] = torchattacks_pgd(model, images, labels, 8 / 255, 2 / 255, 10, 7)
    tensors["pgd3.start"], tensors["pgd3.adv"] = torchattacks_pgd(model, images, labels, 4 / 255, 1 / 255, 3, 8)
    noise = torch.rand(12, 1, 8, 8, generator=g)
    tensors["noise"] = noise
    tensors["odin.x_hat"], tensors["odin.scores"] = odin(model, images)
    tensors["odin.noise_x_hat"], tensors["odin.noise_scores"] = odin(model, noise)
    meta = {"torch": torch.__version__, "timm": timm.__version__, "torchattacks": torchattacks.__version__}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "attacks.safetensors", metadata=meta)


def mahalanobis_odin():
    from pytorch_ood.detector import MahalanobisODIN

    model = Normalized(tiny_vit(), [0.5], [0.5]).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(12, 1, 8, 8, generator=g)  # the batch of `attacks()`, same draws
    images[0, 0, :2] = 0.0
    images[1, 0, :2] = 1.0
    torch.randint(0, 3, (12,), generator=g)
    noise = torch.rand(12, 1, 8, 8, generator=g)
    g = torch.Generator().manual_seed(2)
    train = torch.rand(60, 1, 8, 8, generator=g)
    train_labels = torch.arange(60) % 3

    def encoder(x):
        return model.net.forward_head(model.net.forward_features((x - 0.5) / 0.5), pre_logits=True)

    with torch.no_grad():
        train_z = encoder(train)
    tensors = {"train.images": train, "train.labels": train_labels.to(torch.int64)}
    for eps, key in ((0.002, "eps0.002"), (0.01, "eps0.01")):
        det = MahalanobisODIN(encoder, eps=eps)
        det.fit_features(train_z, train_labels)
        means = det._base.mu.numpy()
        precision = EmpiricalCovariance(assume_centered=False).fit(
            train_z.numpy() - means[train_labels.numpy()]).precision_
        det._base.precision = torch.tensor(precision, dtype=torch.float32)
        for name, x in (("images", images), ("noise", noise)):
            x_hat = det._odin_preprocess(x.clone(), "cpu").detach()
            with torch.no_grad():
                z = encoder(x_hat)
            scores = mahalanobis(train_z.numpy(), train_labels.numpy(), z.numpy(), 3)
            tensors[f"{key}.{name}.x_hat"] = x_hat
            tensors[f"{key}.{name}.scores"] = torch.tensor(scores, dtype=torch.float32)
    import pytorch_ood
    meta = {"torch": torch.__version__, "timm": timm.__version__, "pytorch_ood": pytorch_ood.__version__}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "mahalanobis.safetensors", metadata=meta)


def l2_normalize(x):
    return x / (np.linalg.norm(x, ord=2, axis=-1, keepdims=True) + 1e-10)


def mahalanobis(train, train_labels, test, num_classes):
    means = np.stack([train[train_labels == c].mean(0) for c in range(num_classes)])
    centered = train - means[train_labels]
    precision = EmpiricalCovariance(assume_centered=False).fit(centered).precision_
    d2 = np.stack([np.einsum("nd,de,ne->n", test - m, precision, test - m) for m in means], 1)
    return -d2.min(1)


def knn(train, test, k):
    nn_ = NearestNeighbors(n_neighbors=k).fit(l2_normalize(train))
    dist, _ = nn_.kneighbors(l2_normalize(test))
    return -dist[:, -1]


def logit_scores(logits):
    t = torch.tensor(logits, dtype=torch.float64)
    return {
        "msp": F.softmax(t, dim=1).max(1).values.tolist(),
        "maxlogit": t.max(1).values.tolist(),
        "energy_t1": (1.0 * torch.logsumexp(t / 1.0, dim=1)).tolist(),
        "energy_t2": (2.0 * torch.logsumexp(t / 2.0, dim=1)).tolist(),
    }


def geometry(emb, labels):
    """Wang & Isola's align_loss(alpha=2) over same-class pairs i < j, uniform_loss(t=2)."""
    z = F.normalize(torch.tensor(emb, dtype=torch.float64), dim=1)
    y = torch.tensor(labels)
    i, j = torch.triu_indices(len(y), len(y), offset=1)
    same = y[i] == y[j]
    alignment = (z[i[same]] - z[j[same]]).norm(p=2, dim=1).pow(2).mean().item()
    uniformity = torch.pdist(z, p=2).pow(2).mul(-2).exp().mean().log().item()
    return alignment, uniformity


def detectors():
    rng = np.random.default_rng(3)
    cases = []
    for name, n_train, n_test, dim, classes, k, dead in [
        ("small", 120, 40, 6, 4, 50, False),
        ("dead_unit", 90, 30, 8, 3, 10, True),
    ]:
        centers = rng.normal(0, 2.0, (classes, dim))
        train_labels = rng.integers(0, classes, n_train)
        train = (centers[train_labels] + rng.normal(0, 1.0, (n_train, dim))).astype(np.float32)
        test_labels = rng.integers(0, classes, n_test)
        test = (centers[test_labels] + rng.normal(0, 1.3, (n_test, dim))).astype(np.float32)
        test[: n_test // 3] = rng.normal(0, 3.0, (n_test // 3, dim)).astype(np.float32)
        if dead:  # a dead unit: the covariance is singular, the precision a pseudo-inverse
            train[:, 2] = 0.0
            test[:, 2] = 0.0
        tr, te = train.astype(np.float64), test.astype(np.float64)
        logits = rng.normal(0, 3.0, (n_test, classes)).astype(np.float32)
        logits[0] = logits[0, 0]  # a row of ties
        alignment, uniformity = geometry(tr, train_labels)
        pca = PCA(n_components=2).fit(tr)
        cases.append({
            "name": name,
            "num_classes": classes,
            "k": k,
            "train": train.ravel().tolist(),
            "train_labels": train_labels.tolist(),
            "test": test.ravel().tolist(),
            "dim": dim,
            "mahalanobis": mahalanobis(tr, train_labels, te, classes).tolist(),
            "knn": knn(tr, te, k).tolist(),
            "logits": logits.ravel().tolist(),
            **logit_scores(logits),
            "alignment": alignment,
            "uniformity": uniformity,
            "pca_components": pca.components_.ravel().tolist(),
            "pca_projection": pca.transform(tr).ravel().tolist(),
        })
    meta = {"torch": torch.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}
    (OUT / "detectors.json").write_text(json.dumps({"versions": meta, "cases": cases}) + "\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    attacks()
    mahalanobis_odin()
    detectors()
