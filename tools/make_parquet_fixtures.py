"""Parquet fixtures for the hub data set reader of `multimix_data::parquet`.

Re-run from the repository root (fixed seed, deterministic output; datasets 5.2, pyarrow 26):

    /work/pyref/bin/python tools/make_parquet_fixtures.py

Writes crates/data/tests/fixtures/parquet/:

    hf/data/train-0000{0,1}-of-00002.parquet   12 gray 28x28 PNGs in two shards, written by HF
    hf/data/test-00000-of-00001.parquet        `datasets` (`Image()` struct column {bytes, path},
                                               `ClassLabel` label, row groups of 4; datasets
                                               stores image bytes uncompressed, the rest snappy)
    hf/expected.json                           labels and class names per split
    hf/{train,test}.u8                         the pixels PIL decodes, image after image (HxW)
    plain_rgb.parquet      pyarrow: a plain binary column `img` (RGB PNGs) and uint8 `fine_label`
    plain_rgb.u8           its pixels as C x H x W (channel planes), as multimix stores them
    plain_rgb_{zstd,brotli,gzip,lz4}.parquet   the same table in each of the other codecs
    lzo.parquet            an uncompressed table whose footer declares LZO (which no writer here
                           implements: the codec field of each column chunk patched to 3)
    jpeg.parquet           pyarrow: binary `image` (RGB JPEGs, quality 90) and int32 `labels`
    jpeg.u8                PIL's decode (C x H x W); other JPEG decoders differ by a few levels
    no_image.parquet       columns `text` and `label`, no image column
    no_label.parquet       an `image` column and `idx`, no label column
    bad_image.parquet      an HF `image` struct whose row 2 holds bytes that are no image
"""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, Features, Image as HFImage
from PIL import Image

OUT = Path("crates/data/tests/fixtures/parquet")
CLASSES = ["circle", "square", "cross"]
RNG = np.random.default_rng(7)


def gray_image(label: int) -> np.ndarray:
    """A 28x28 gray image: a class shape over noise, so every image differs."""
    img = RNG.integers(0, 60, size=(28, 28), dtype=np.uint8)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = RNG.integers(10, 18, size=2)
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
    elif label == 1:
        mask = (abs(yy - cy) < 6) & (abs(xx - cx) < 6)
    else:
        mask = (abs(yy - cy) < 2) | (abs(xx - cx) < 2)
    img[mask] = RNG.integers(180, 256, size=int(mask.sum()), dtype=np.uint8)
    return img


def encode(img: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def decoded_chw(data: bytes) -> np.ndarray:
    """PIL's decode of encoded bytes as C x H x W."""
    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def hf_split(name: str, labels: list[int], shards: int) -> None:
    images = [encode(gray_image(y), "PNG") for y in labels]
    features = Features({"image": HFImage(), "label": ClassLabel(names=CLASSES)})
    ds = Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": labels},
        features=features,
    )
    for i in range(shards):
        shard = ds.shard(num_shards=shards, index=i, contiguous=True)
        path = OUT / "hf" / "data" / f"{name}-{i:05d}-of-{shards:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        shard.to_parquet(str(path), batch_size=4)  # datasets writes snappy
    pixels = np.concatenate([decoded_chw(b).ravel() for b in images])
    (OUT / "hf" / f"{name}.u8").write_bytes(pixels.tobytes())


def write_table(name: str, table: pa.Table) -> None:
    pq.write_table(table, str(OUT / name), compression="snappy", row_group_size=3)


def declare_lzo(path: Path, columns: list[str]) -> None:
    """Rewrite the codec of every column chunk of an uncompressed file as LZO, in place.

    In the footer's Thrift compact encoding, a chunk's `path_in_schema` (field 3, a one-element
    list of strings: 0x19 0x18, length, name) is followed by its `codec` (field 4, i32: 0x15,
    then the zigzag varint, 0x00 for UNCOMPRESSED and 0x06 for LZO = 3).
    """
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    for name in columns:
        key = b"\x19\x18" + bytes([len(name)]) + name.encode() + b"\x15\x00"
        at = data.find(key, start)
        assert at > 0 and data.find(key, at + 1) < 0, name
        data[at + len(key) - 1] = 0x06
    path.write_bytes(bytes(data))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train = [int(y) for y in RNG.integers(0, 3, size=12)]
    test = [int(y) for y in RNG.integers(0, 3, size=8)]
    hf_split("train", train, shards=2)
    hf_split("test", test, shards=1)
    expected = {"classes": CLASSES, "train": train, "test": test, "shape": [1, 28, 28]}
    (OUT / "hf" / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    rgb = [RNG.integers(0, 256, size=(28, 28, 3), dtype=np.uint8) for _ in range(5)]
    png = [encode(img, "PNG") for img in rgb]
    plain = pa.table({
        "img": pa.array(png, pa.binary()),
        "fine_label": pa.array([4, 0, 2, 4, 1], pa.uint8()),
    })
    write_table("plain_rgb.parquet", plain)
    # The same table in the other codecs of the format (zstd is polars' default).
    for codec in ("zstd", "brotli", "gzip", "lz4"):
        path = OUT / f"plain_rgb_{codec}.parquet"
        pq.write_table(plain, str(path), compression=codec, row_group_size=3)
    lzo = OUT / "lzo.parquet"
    pq.write_table(plain.slice(0, 2), str(lzo), compression="none")
    declare_lzo(lzo, ["img", "fine_label"])
    (OUT / "plain_rgb.u8").write_bytes(
        np.concatenate([decoded_chw(b).ravel() for b in png]).tobytes()
    )

    # Smooth images, so that JPEG decoders agree within a few levels.
    yy, xx = np.mgrid[:28, :28]
    smooth = [
        np.stack([(yy * 9 + k * 30) % 256, (xx * 9) % 256, ((yy + xx) * 4 + k * 50) % 256], -1)
        .astype(np.uint8)
        for k in range(2)
    ]
    jpg = [encode(img, "JPEG", quality=90) for img in smooth]
    write_table(
        "jpeg.parquet",
        pa.table({"image": pa.array(jpg, pa.binary()), "labels": pa.array([1, 0], pa.int32())}),
    )
    (OUT / "jpeg.u8").write_bytes(np.concatenate([decoded_chw(b).ravel() for b in jpg]).tobytes())

    write_table(
        "no_image.parquet",
        pa.table({"text": ["a", "b", "c"], "label": pa.array([0, 1, 0], pa.int64())}),
    )
    write_table(
        "no_label.parquet",
        pa.table({"image": pa.array(png[:2], pa.binary()), "idx": pa.array([0, 1], pa.int64())}),
    )
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    bad = [{"bytes": png[0], "path": "a.png"}, {"bytes": png[1], "path": "b.png"},
           {"bytes": b"this is not an image", "path": "c.png"}]
    write_table(
        "bad_image.parquet",
        pa.table({"image": pa.array(bad, struct), "label": pa.array([0, 1, 2], pa.int64())}),
    )


if __name__ == "__main__":
    main()
