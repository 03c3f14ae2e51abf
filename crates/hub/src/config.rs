//! timm's `config.json`: the model and preprocessing description stored beside
//! `model.safetensors` in a hub repository.
//!
//! The layout is what timm 1.0's `timm.models._hub.save_config_for_hf` writes (and
//! `push_to_hf_hub` uploads): `architecture`, `num_classes`, `num_features`, `global_pool`,
//! optional `label_names` / `label_descriptions`, `model_args` (the keyword arguments that rebuild
//! the model, absent when there are none) and `pretrained_cfg` (input size, normalization, crop,
//! first convolution and classifier names, license, ...). Fields not modelled here are kept in
//! `extra` maps, so a file read and written again keeps them all. timm's older single-dict layout
//! (no `pretrained_cfg`) is not read.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::checkpoint::{write_atomic, CheckpointError};

/// The file name of the config in a repository or run directory.
pub const TIMM_CONFIG_FILE: &str = "config.json";

/// Fields a config must hold (non-null); dotted names are inside `pretrained_cfg`.
const REQUIRED: [&str; 6] = [
    "architecture",
    "num_classes",
    "pretrained_cfg",
    "pretrained_cfg.input_size",
    "pretrained_cfg.mean",
    "pretrained_cfg.std",
];

/// The `pretrained_cfg` section: how inputs must be prepared for the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedCfg {
    /// Input shape `[C, H, W]`.
    pub input_size: Vec<usize>,
    /// Per-channel normalization mean.
    pub mean: Vec<f64>,
    /// Per-channel normalization standard deviation.
    pub std: Vec<f64>,
    /// Resize interpolation (`bilinear`, `bicubic`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation: Option<String>,
    /// Center-crop fraction used at evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_pct: Option<f64>,
    /// Classes of the classifier head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Name of the first convolution (adapted when `in_chans` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_conv: Option<String>,
    /// Name of the classifier module (reset when `num_classes` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<String>,
    /// License of the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Every other field (`tag`, `crop_mode`, `pool_size`, `fixed_input_size`, ...), kept as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Class names as timm stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LabelNames {
    /// One name per class index, in order (timm writes a list).
    List(Vec<String>),
    /// Names by class index, where some indices have none (timm writes a `{"id": name}` dict).
    ById(BTreeMap<usize, String>),
}

impl LabelNames {
    /// The name of class `index`, if it has one.
    pub fn name(&self, index: usize) -> Option<&str> {
        match self {
            Self::List(names) => names.get(index),
            Self::ById(names) => names.get(&index),
        }
        .map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for LabelNames {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LabelNamesVisitor)
    }
}

/// Reads a list of names or a map from decimal class indices to names.
struct LabelNamesVisitor;

impl<'de> Visitor<'de> for LabelNamesVisitor {
    type Value = LabelNames;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of class names or a map from class indices to names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LabelNames, A::Error> {
        let mut names = Vec::new();
        while let Some(name) = seq.next_element()? {
            names.push(name);
        }
        Ok(LabelNames::List(names))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelNames, A::Error> {
        let mut names = BTreeMap::new();
        while let Some((key, name)) = map.next_entry::<String, String>()? {
            let index = key.parse().map_err(|_| {
                de::Error::custom(format!("label_names key `{key}` is not a class index"))
            })?;
            names.insert(index, name);
        }
        Ok(LabelNames::ById(names))
    }
}

/// timm's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimmConfig {
    /// timm model name (`vit_small_patch16_224`, `resnet50`, ...).
    pub architecture: String,
    /// Classes of the classifier head.
    pub num_classes: usize,
    /// Width of the pooled features fed to the head (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_features: Option<usize>,
    /// Global pooling type (`avg`, `token`, ...; informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_pool: Option<String>,
    /// Class names, when the exporter gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_names: Option<LabelNames>,
    /// Keyword arguments that rebuild the model (empty when timm wrote none).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub model_args: Map<String, Value>,
    /// Preprocessing and head description of the weights.
    pub pretrained_cfg: PretrainedCfg,
    /// Every other top-level field (`label_descriptions`, exporter additions, ...), kept as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TimmConfig {
    /// The config of a model of this project: its architecture, head size, the arguments that
    /// rebuild it (`model_args`) and its input (`[C, H, W]`, per-channel mean and std).
    pub fn new(
        architecture: &str,
        num_classes: usize,
        model_args: Map<String, Value>,
        input_size: [usize; 3],
        mean: Vec<f64>,
        std: Vec<f64>,
    ) -> Self {
        Self {
            architecture: architecture.to_string(),
            num_classes,
            num_features: None,
            global_pool: None,
            label_names: None,
            model_args,
            pretrained_cfg: PretrainedCfg {
                input_size: input_size.to_vec(),
                mean,
                std,
                interpolation: None,
                crop_pct: None,
                num_classes: Some(num_classes),
                first_conv: None,
                classifier: None,
                license: None,
                extra: Map::new(),
            },
            extra: Map::new(),
        }
    }

    /// Reads and checks a `config.json`; errors name the file and the field.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::io(path, source))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::ConfigNotJson {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(field) = missing_field(&value) {
            return Err(CheckpointError::MissingField {
                path: path.to_path_buf(),
                field,
            });
        }
        let config: Self =
            serde_json::from_value(value).map_err(|source| CheckpointError::InvalidConfig {
                path: path.to_path_buf(),
                source,
            })?;
        if config.pretrained_cfg.input_size.len() != 3 {
            return Err(CheckpointError::InvalidInputSize {
                path: path.to_path_buf(),
                input_size: config.pretrained_cfg.input_size,
            });
        }
        Ok(config)
    }

    /// Writes the config as pretty JSON (2-space indent, as timm), atomically.
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|source| CheckpointError::InvalidConfig {
                path: path.to_path_buf(),
                source,
            })?;
        write_atomic(path, &bytes).map_err(|source| CheckpointError::io(path, source))
    }
}

/// The first required field absent or null in an object that should hold it.
///
/// A parent that is not an object is left to the typed parse, which names its type.
fn missing_field(root: &Value) -> Option<&'static str> {
    REQUIRED.into_iter().find(|field| {
        let (parent, key) = match field.split_once('.') {
            Some((parent, key)) => (root.get(parent), key),
            None => (Some(root), *field),
        };
        parent
            .and_then(Value::as_object)
            .is_some_and(|object| object.get(key).is_none_or(Value::is_null))
    })
}
