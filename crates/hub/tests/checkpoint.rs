//! safetensors reading and writing, against files written by timm / PyTorch / safetensors
//! (`tools/make_hub_fixtures.py`) and corrupt files built from them.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use multimix_hub::{
    inspect_safetensors, load_safetensors, save_safetensors, write_atomic, CheckpointError,
    ForeignFormat,
};
use safetensors::SafeTensors;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the generator recorded about one safetensors fixture.
#[derive(Deserialize)]
struct Expected {
    metadata: BTreeMap<String, String>,
    tensors: Vec<(String, String, Vec<usize>)>,
    values: BTreeMap<String, Vec<f64>>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(file: &str) -> Expected {
    let text = fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let all: BTreeMap<String, Value> = serde_json::from_str(&text).unwrap();
    serde_json::from_value(all[file].clone()).unwrap()
}

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("multimix-hub-checkpoint")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn st_name(dtype: DType) -> String {
    safetensors::Dtype::from(dtype).to_string()
}

fn values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Loads a fixture and checks its table, metadata and recorded values.
fn check_fixture(file: &str, key: &str) {
    let path = fixtures().join(file);
    let want = expected(key);
    let ckpt = load_safetensors(&path, &Device::Cpu).unwrap();
    let table: Vec<(String, String, Vec<usize>)> = ckpt
        .tensors
        .iter()
        .map(|(name, t)| (name.clone(), st_name(t.dtype()), t.dims().to_vec()))
        .collect();
    assert_eq!(table, want.tensors, "{file}");
    assert_eq!(ckpt.metadata, want.metadata, "{file}");
    for (name, want_values) in &want.values {
        assert_eq!(&values(&ckpt.tensors[name]), want_values, "{file}: {name}");
    }
    let (metadata, infos) = inspect_safetensors(&path).unwrap();
    assert_eq!(metadata, want.metadata);
    let inspected: Vec<(String, String, Vec<usize>)> = infos
        .into_iter()
        .map(|i| (i.name, st_name(i.dtype), i.shape))
        .collect();
    assert_eq!(inspected, want.tensors);
}

#[test]
fn timm_vit_loads() {
    check_fixture("vit_tiny/model.safetensors", "vit_tiny");
}

#[test]
fn timm_resnet_loads_with_i64_batchnorm_counters() {
    check_fixture("resnet_tiny/model.safetensors", "resnet_tiny");
    let ckpt = load_safetensors(
        &fixtures().join("resnet_tiny/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let counter = &ckpt.tensors["bn1.num_batches_tracked"];
    assert_eq!(counter.dtype(), DType::I64);
    assert_eq!(counter.dims(), &[] as &[usize]);
    assert_eq!(counter.to_scalar::<i64>().unwrap(), 3);
    // timm's save_for_hf passes no metadata to safetensors.torch.save_file.
    assert!(ckpt.metadata.is_empty());
}

#[test]
fn pytorch_written_dtypes_load_with_format_metadata() {
    check_fixture("dtypes.safetensors", "dtypes");
    let ckpt = load_safetensors(&fixtures().join("dtypes.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ckpt.metadata["format"], "pt");
    assert_eq!(
        ckpt.tensors["i64_scalar"].to_scalar::<i64>().unwrap(),
        12_345_678_901
    );
    assert_eq!(ckpt.tensors["empty"].dims(), &[0, 4]);
}

/// Round trip through our writer; the original and the copy are compared with the safetensors
/// crate's own reader.
fn round_trip(file: &str, test: &str) {
    let source = fixtures().join(file);
    let ckpt = load_safetensors(&source, &Device::Cpu).unwrap();
    let out = scratch(test).join("copy.safetensors");
    let metadata = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
    save_safetensors(&out, &ckpt.tensors, &metadata).unwrap();

    let (original, copy) = (fs::read(&source).unwrap(), fs::read(&out).unwrap());
    let (original, copy) = (
        SafeTensors::deserialize(&original).unwrap(),
        SafeTensors::deserialize(&copy).unwrap(),
    );
    let mut names = copy.names();
    names.sort();
    let mut original_names = original.names();
    original_names.sort();
    assert_eq!(names, original_names);
    for name in names {
        let (a, b) = (original.tensor(name).unwrap(), copy.tensor(name).unwrap());
        assert_eq!(
            (a.dtype(), a.shape(), a.data()),
            (b.dtype(), b.shape(), b.data()),
            "{name}"
        );
    }
    let (_, header) = SafeTensors::read_metadata(&fs::read(&out).unwrap()).unwrap();
    let written: BTreeMap<String, String> =
        header.metadata().clone().unwrap().into_iter().collect();
    let want = BTreeMap::from([
        ("epoch".to_string(), "3".to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);
    assert_eq!(written, want);

    let reloaded = load_safetensors(&out, &Device::Cpu).unwrap();
    assert_eq!(reloaded.metadata, want);
    for (name, tensor) in &ckpt.tensors {
        assert_eq!(values(&reloaded.tensors[name]), values(tensor), "{name}");
    }
    assert_eq!(listing(out.parent().unwrap()), ["copy.safetensors"]);
}

#[test]
fn round_trip_timm_resnet() {
    round_trip("resnet_tiny/model.safetensors", "round_trip_resnet");
}

#[test]
fn round_trip_all_dtypes() {
    round_trip("dtypes.safetensors", "round_trip_dtypes");
}

#[test]
fn saves_strided_tensors_and_keeps_callers_format() {
    let dir = scratch("strided");
    let path = dir.join("t.safetensors");
    let t = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap()
        .t()
        .unwrap();
    let metadata = BTreeMap::from([("format".to_string(), "np".to_string())]);
    save_safetensors(&path, &BTreeMap::from([("t".to_string(), t)]), &metadata).unwrap();
    let ckpt = load_safetensors(&path, &Device::Cpu).unwrap();
    assert_eq!(ckpt.tensors["t"].dims(), &[3, 2]);
    assert_eq!(values(&ckpt.tensors["t"]), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(ckpt.metadata, metadata);
}

#[test]
fn writes_safetensors_own_layout() {
    let ckpt = load_safetensors(&fixtures().join("dtypes.safetensors"), &Device::Cpu).unwrap();
    let path = scratch("layout").join("dtypes.safetensors");
    save_safetensors(&path, &ckpt.tensors, &BTreeMap::new()).unwrap();
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let reference = safetensors::serialize(&ckpt.tensors, Some(format)).unwrap();
    assert_eq!(fs::read(&path).unwrap(), reference);
}

#[test]
fn equal_inputs_give_equal_files() {
    let dir = scratch("deterministic");
    let metadata: BTreeMap<String, String> = (0..8)
        .map(|i| (format!("key{i}"), format!("value{i}")))
        .collect();
    let ckpt =
        load_safetensors(&fixtures().join("vit_tiny/model.safetensors"), &Device::Cpu).unwrap();
    for name in ["a.safetensors", "b.safetensors"] {
        save_safetensors(&dir.join(name), &ckpt.tensors, &metadata).unwrap();
    }
    let (a, b) = (
        fs::read(dir.join("a.safetensors")).unwrap(),
        fs::read(dir.join("b.safetensors")).unwrap(),
    );
    assert_eq!(a, b);
}

// ---------------------------------------------------------------------------------------------
// Corrupt files.

/// The vit fixture's header as JSON and its data section.
fn vit_parts() -> (Value, Vec<u8>) {
    let bytes = fs::read(fixtures().join("vit_tiny/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn assemble(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    bytes
}

/// The vit fixture with its header edited.
fn vit_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (mut header, data) = vit_parts();
    edit(&mut header);
    assemble(&serde_json::to_vec(&header).unwrap(), &data)
}

/// Writes `bytes` as `name`, checks that loading and inspecting both fail with an error that
/// `is_expected` accepts and whose message names the file; returns the message.
fn rejected(name: &str, bytes: &[u8], is_expected: impl Fn(&CheckpointError) -> bool) -> String {
    let path = scratch(&format!("corrupt-{name}")).join(name);
    fs::write(&path, bytes).unwrap();
    let load = load_safetensors(&path, &Device::Cpu).unwrap_err();
    let inspect = inspect_safetensors(&path).unwrap_err();
    assert!(is_expected(&load), "{name}: load gave {load:?}");
    assert!(is_expected(&inspect), "{name}: inspect gave {inspect:?}");
    let message = load.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "{name}: {message}"
    );
    message
}

#[test]
fn pytorch_pickles_are_named() {
    for file in ["torch_zip.pth", "torch_legacy.bin"] {
        let message = rejected(file, &fs::read(fixtures().join(file)).unwrap(), |e| {
            matches!(
                e,
                CheckpointError::NotSafetensors {
                    kind: ForeignFormat::PyTorchZip | ForeignFormat::Pickle { protocol: 2 },
                    ..
                }
            )
        });
        assert!(
            message.contains("is a PyTorch pickle checkpoint"),
            "{message}"
        );
        assert!(message.contains("only safetensors are read"), "{message}");
    }
    rejected("crafted.pth", b"\x80\x02}q\x00.", |e| {
        matches!(
            e,
            CheckpointError::NotSafetensors {
                kind: ForeignFormat::Pickle { protocol: 2 },
                ..
            }
        )
    });
    rejected(
        "proto4.bin",
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.",
        |e| {
            matches!(
                e,
                CheckpointError::NotSafetensors {
                    kind: ForeignFormat::Pickle { protocol: 4 },
                    ..
                }
            )
        },
    );
    let mut zip = b"PK\x03\x04".to_vec();
    zip.resize(64, 0);
    rejected("other.zip", &zip, |e| {
        matches!(
            e,
            CheckpointError::NotSafetensors {
                kind: ForeignFormat::Zip,
                ..
            }
        )
    });
}

#[test]
fn empty_short_and_text_files_are_named() {
    rejected("empty.safetensors", b"", |e| {
        matches!(
            e,
            CheckpointError::NotSafetensors {
                kind: ForeignFormat::Empty,
                ..
            }
        )
    });
    rejected("short.safetensors", &[1, 2, 3], |e| {
        matches!(e, CheckpointError::TooShort { len: 3, .. })
    });
    rejected(
        "notes.safetensors",
        "accuracy: 0.93\ncafé\n".as_bytes(),
        |e| {
            matches!(
                e,
                CheckpointError::NotSafetensors {
                    kind: ForeignFormat::Text,
                    ..
                }
            )
        },
    );
    let lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n";
    let message = rejected("model.safetensors", lfs.as_bytes(), |e| {
        matches!(
            e,
            CheckpointError::NotSafetensors {
                kind: ForeignFormat::GitLfsPointer,
                ..
            }
        )
    });
    assert!(message.contains("git lfs pull"), "{message}");
}

#[test]
fn header_length_beyond_cap_or_file() {
    let valid = fs::read(fixtures().join("vit_tiny/model.safetensors")).unwrap();
    for (name, len) in [
        ("cap.safetensors", 200_000_000u64),
        ("max.safetensors", u64::MAX),
    ] {
        let mut bytes = valid.clone();
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        rejected(
            name,
            &bytes,
            |e| matches!(e, CheckpointError::HeaderTooLarge { header_len, .. } if *header_len == len),
        );
    }
    let mut bytes = valid.clone();
    bytes[..8].copy_from_slice(&(valid.len() as u64).to_le_bytes());
    rejected("beyond.safetensors", &bytes, |e| {
        matches!(e, CheckpointError::HeaderBeyondFile { .. })
    });
    rejected("cut-header.safetensors", &valid[..100], |e| {
        matches!(e, CheckpointError::HeaderBeyondFile { file_len: 100, .. })
    });
}

#[test]
fn header_not_json_or_not_a_tensor_table() {
    let (header, data) = vit_parts();
    let len = serde_json::to_vec(&header).unwrap().len();
    rejected(
        "garbage.safetensors",
        &assemble(&vec![b'x'; len], &data),
        |e| matches!(e, CheckpointError::HeaderNotJson { .. }),
    );
    rejected("latin1.safetensors", &assemble(b"{\"\xe9\":1}", &[]), |e| {
        matches!(e, CheckpointError::HeaderNotJson { .. })
    });
    let no_dtype = vit_with(|h| {
        h["head.bias"].as_object_mut().unwrap().remove("dtype");
    });
    let message = rejected("no-dtype.safetensors", &no_dtype, |e| {
        matches!(e, CheckpointError::InvalidHeader { .. })
    });
    assert!(message.contains("dtype"), "{message}");
    let numeric_metadata = vit_with(|h| h["__metadata__"] = json!({"epoch": 3}));
    rejected("metadata.safetensors", &numeric_metadata, |e| {
        matches!(e, CheckpointError::InvalidHeader { .. })
    });
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let entry = r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
    let header = format!(r#"{{"w":{entry},"w":{entry}}}"#);
    let bytes = assemble(header.as_bytes(), &[0; 8]);
    // safetensors itself keeps one of the two silently.
    assert!(SafeTensors::deserialize(&bytes).is_ok());
    let message = rejected("twice.safetensors", &bytes, |e| {
        matches!(e, CheckpointError::InvalidHeader { .. })
    });
    assert!(message.contains("tensor `w` is listed twice"), "{message}");
}

#[test]
fn unsupported_dtypes_are_named() {
    for dtype in ["F8_E5M2", "BOOL", "U64", "Q4_K"] {
        let bytes = vit_with(|h| h["head.bias"]["dtype"] = json!(dtype));
        let message = rejected(&format!("{dtype}.safetensors"), &bytes, |e| {
            matches!(e, CheckpointError::UnsupportedDtype { tensor, dtype: d, .. }
                if tensor == "head.bias" && d == dtype)
        });
        assert!(message.contains(dtype), "{message}");
    }
}

#[test]
fn offsets_reversed_out_of_range_or_wrong_size() {
    let reversed = vit_with(|h| h["cls_token"]["data_offsets"] = json!([13184, 13120]));
    rejected("reversed.safetensors", &reversed, |e| {
        matches!(e, CheckpointError::OffsetsReversed { tensor, start: 13184, end: 13120, .. }
            if tensor == "cls_token")
    });
    let valid = fs::read(fixtures().join("vit_tiny/model.safetensors")).unwrap();
    rejected("truncated.safetensors", &valid[..valid.len() - 10], |e| {
        matches!(e, CheckpointError::OffsetsOutOfRange { tensor, end: 27092, data_len: 27082, .. }
            if tensor == "pos_embed")
    });
    // head.bias (5 floats) pointed at norm.bias's 16 floats.
    let swapped =
        vit_with(|h| h["head.bias"]["data_offsets"] = h["norm.bias"]["data_offsets"].clone());
    rejected("swapped.safetensors", &swapped, |e| {
        matches!(e, CheckpointError::SizeMismatch { tensor, expected: 20, actual: 64, .. }
            if tensor == "head.bias")
    });
    let reshaped = vit_with(|h| h["norm.bias"]["shape"] = json!([4, 5]));
    rejected("reshaped.safetensors", &reshaped, |e| {
        matches!(
            e,
            CheckpointError::SizeMismatch {
                expected: 80,
                actual: 64,
                ..
            }
        )
    });
    let huge = vit_with(|h| h["norm.bias"]["shape"] = json!([1u64 << 62, 8]));
    rejected("overflow.safetensors", &huge, |e| {
        matches!(e, CheckpointError::ShapeOverflow { .. })
    });
}

#[test]
fn offsets_overlapping_or_leaving_gaps() {
    let overlap =
        vit_with(|h| h["norm.weight"]["data_offsets"] = h["norm.bias"]["data_offsets"].clone());
    rejected("overlap.safetensors", &overlap, |e| {
        matches!(e, CheckpointError::Overlap { first, second, .. }
            if first == "norm.bias" && second == "norm.weight")
    });
    let inner = vit_with(|h| {
        h["norm.weight"] = json!({"dtype": "F32", "shape": [0], "data_offsets": [13530, 13530]})
    });
    rejected("inside.safetensors", &inner, |e| {
        matches!(e, CheckpointError::Overlap { .. })
    });
    let middle = vit_with(|h| {
        h.as_object_mut().unwrap().remove("head.bias");
    });
    rejected("middle-gap.safetensors", &middle, |e| {
        matches!(
            e,
            CheckpointError::Gap {
                start: 13184,
                end: 13204,
                ..
            }
        )
    });
    let leading = vit_with(|h| {
        h.as_object_mut().unwrap().remove("blocks.0.attn.proj.bias");
    });
    rejected("leading-gap.safetensors", &leading, |e| {
        matches!(
            e,
            CheckpointError::Gap {
                start: 0,
                end: 64,
                ..
            }
        )
    });
    let mut trailing = fs::read(fixtures().join("vit_tiny/model.safetensors")).unwrap();
    trailing.extend_from_slice(&[0; 8]);
    rejected("trailing.safetensors", &trailing, |e| {
        matches!(
            e,
            CheckpointError::Gap {
                start: 27092,
                end: 27100,
                ..
            }
        )
    });
}

// ---------------------------------------------------------------------------------------------
// Atomic writing.

fn small_tensors() -> BTreeMap<String, Tensor> {
    BTreeMap::from([(
        "w".to_string(),
        Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap(),
    )])
}

#[test]
fn failed_save_leaves_existing_file_and_no_temporary() {
    let dir = scratch("failed_save");
    let path = dir.join("model.safetensors");
    fs::write(&path, b"previous checkpoint").unwrap();

    let mut tensors = small_tensors();
    tensors.insert(
        "f8".to_string(),
        Tensor::zeros(4, DType::F8E4M3, &Device::Cpu).unwrap(),
    );
    let err = save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::UnsupportedDtype { tensor, dtype, .. } if tensor == "f8" && dtype == "F8_E4M3"),
        "{err:?}"
    );
    assert!(err.to_string().contains("model.safetensors"));

    let mut tensors = small_tensors();
    tensors.insert(
        "__metadata__".to_string(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, CheckpointError::ReservedTensorName { .. }),
        "{err:?}"
    );

    assert_eq!(fs::read(&path).unwrap(), b"previous checkpoint");
    assert_eq!(listing(&dir), ["model.safetensors"]);
}

#[test]
fn failed_rename_removes_the_temporary_file() {
    let dir = scratch("failed_rename");
    // The destination is a non-empty directory: the file is written and synced, the rename fails.
    let path = dir.join("model.safetensors");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("keep"), b"x").unwrap();
    let err = save_safetensors(&path, &small_tensors(), &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"));
    assert_eq!(listing(&dir), ["model.safetensors"]);
    assert_eq!(listing(&path), ["keep"]);
}

#[test]
fn write_atomic_replaces_whole_files_only() {
    let dir = scratch("write_atomic");
    let path = dir.join("report.json");
    write_atomic(&path, b"a long first version").unwrap();
    write_atomic(&path, b"short").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"short");
    assert_eq!(listing(&dir), ["report.json"]);
    assert!(write_atomic(&dir.join("missing/report.json"), b"x").is_err());
    assert_eq!(listing(&dir), ["report.json"]);
}
