//! The model zoo: one TOML card per pretrained checkpoint (`models/*.toml` in the repository,
//! embedded in the binary), and its download with the card's sha256 checked.
//!
//! The card format is described in `models/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::remote::{verify_sha256, Hub, HubError, RepoId, DEFAULT_REVISION};

/// The cards shipped with multimix: `(file name, contents)`.
const BUILTIN: [(&str, &str); 5] = [
    (
        "resnet18.a1_in1k.toml",
        include_str!("../../../models/resnet18.a1_in1k.toml"),
    ),
    (
        "resnet50.a1_in1k.toml",
        include_str!("../../../models/resnet50.a1_in1k.toml"),
    ),
    (
        "vit_base_patch16_224.augreg2_in21k_ft_in1k.toml",
        include_str!("../../../models/vit_base_patch16_224.augreg2_in21k_ft_in1k.toml"),
    ),
    (
        "vit_small_patch16_224.augreg_in21k_ft_in1k.toml",
        include_str!("../../../models/vit_small_patch16_224.augreg_in21k_ft_in1k.toml"),
    ),
    (
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k.toml",
        include_str!("../../../models/vit_tiny_patch16_224.augreg_in21k_ft_in1k.toml"),
    ),
];

/// Who trained the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// timm (pytorch-image-models).
    Timm,
    /// This project.
    Multimix,
}

impl Source {
    /// The name used in cards.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Timm => "timm",
            Source::Multimix => "multimix",
        }
    }
}

/// A card as written in TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    name: String,
    architecture: String,
    source: Source,
    repo: String,
    #[serde(default)]
    revision: Option<String>,
    file: String,
    #[serde(default)]
    sha256: Option<String>,
    dataset: String,
    license: String,
    #[serde(default)]
    paper: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metrics_source: Option<String>,
    #[serde(default)]
    model_args: Map<String, Value>,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
}

/// One zoo entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ZooEntry {
    /// The name (timm's `architecture.tag` for timm weights).
    pub name: String,
    /// Architecture name.
    pub architecture: String,
    /// Arguments of the architecture (timm's `model_args`).
    pub model_args: Map<String, Value>,
    /// Who trained the weights.
    pub source: Source,
    /// Hub repository.
    pub repo: RepoId,
    /// Revision (branch, tag or commit).
    pub revision: String,
    /// The weights file in the repository (a `.safetensors` file).
    pub file: String,
    /// The weights' sha256, when known.
    pub sha256: Option<String>,
    /// Data set the weights were trained (or fine-tuned) on.
    pub dataset: String,
    /// License of the weights.
    pub license: String,
    /// Paper describing the weights or their recipe.
    pub paper: Option<String>,
    /// One-paragraph description.
    pub description: Option<String>,
    /// Where the metrics come from.
    pub metrics_source: Option<String>,
    /// Metrics by name.
    pub metrics: BTreeMap<String, f64>,
}

/// Why a card or the zoo could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// A card is not valid TOML or lacks a field.
    #[error("zoo card {origin}: {message}")]
    InvalidCard {
        /// The card's file.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Two cards share a name.
    #[error("zoo cards {first} and {second} both define `{name}`")]
    Duplicate {
        /// The name.
        name: String,
        /// One card.
        first: String,
        /// The other card.
        second: String,
    },
    /// No entry of that name.
    #[error("no zoo entry named `{name}`; known: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A cards directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ZooEntry {
    /// Parse and check one card; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ZooError> {
        let invalid = |message: String| ZooError::InvalidCard {
            origin: origin.to_string(),
            message,
        };
        let raw: RawCard = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        let repo = RepoId::parse(&raw.repo).map_err(|e| invalid(e.to_string()))?;
        if raw.name.trim().is_empty() || raw.name.contains(char::is_whitespace) {
            return Err(invalid(format!("name `{}` must be one word", raw.name)));
        }
        if raw.file.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            return Err(invalid(format!(
                "file `{}`: a file name, not a pattern",
                raw.file
            )));
        }
        if !raw.file.ends_with(".safetensors") {
            return Err(invalid(format!(
                "file `{}`: only .safetensors weights are read",
                raw.file
            )));
        }
        if let Some(sha) = &raw.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!("sha256 `{sha}` is not 64 hex digits")));
            }
        }
        if let Some((metric, value)) = raw.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(format!("metric {metric} = {value} is not finite")));
        }
        Ok(Self {
            name: raw.name,
            architecture: raw.architecture,
            model_args: raw.model_args,
            source: raw.source,
            repo,
            revision: raw.revision.unwrap_or_else(|| DEFAULT_REVISION.to_string()),
            file: raw.file,
            sha256: raw.sha256.map(|s| s.to_ascii_lowercase()),
            dataset: raw.dataset,
            license: raw.license,
            paper: raw.paper,
            description: raw.description,
            metrics_source: raw.metrics_source,
            metrics: raw.metrics,
        })
    }

    /// Download `config.json` and the weights into the cache (or find them there), check the
    /// weights against the card's sha256, and return the snapshot directory.
    pub fn download(&self, hub: &Hub) -> Result<PathBuf, HubError> {
        let dir = hub.download_files(&self.repo, &self.revision, &["config.json", &self.file])?;
        if let Some(expected) = &self.sha256 {
            verify_sha256(&self.repo, &self.file, &dir.join(&self.file), expected)?;
        }
        Ok(dir)
    }
}

/// The zoo: entries by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Zoo {
    entries: BTreeMap<String, ZooEntry>,
}

impl Zoo {
    /// The cards shipped with multimix.
    pub fn builtin() -> Result<Self, ZooError> {
        Self::from_cards(
            BUILTIN
                .iter()
                .map(|(origin, text)| (origin.to_string(), *text)),
        )
    }

    /// The cards (`*.toml`) of a directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ZooError> {
        let io = |source| ZooError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut cards = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).map_err(|source| ZooError::Io {
                    path: path.clone(),
                    source,
                })?;
                cards.push((path.display().to_string(), text));
            }
        }
        Self::from_cards(cards.iter().map(|(o, t)| (o.clone(), t.as_str())))
    }

    /// A zoo of `(origin, text)` cards; names must be unique.
    pub fn from_cards<'a>(
        cards: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<Self, ZooError> {
        let mut entries = BTreeMap::new();
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        for (origin, text) in cards {
            let entry = ZooEntry::parse(text, &origin)?;
            if let Some(first) = origins.insert(entry.name.clone(), origin.clone()) {
                return Err(ZooError::Duplicate {
                    name: entry.name,
                    first,
                    second: origin,
                });
            }
            entries.insert(entry.name.clone(), entry);
        }
        Ok(Self { entries })
    }

    /// The entries, by name.
    pub fn entries(&self) -> impl Iterator<Item = &ZooEntry> {
        self.entries.values()
    }

    /// The entry `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&ZooEntry> {
        self.entries.get(name)
    }

    /// The entry `name`, or an error listing the known names.
    pub fn entry(&self, name: &str) -> Result<&ZooEntry, ZooError> {
        self.get(name).ok_or_else(|| ZooError::Unknown {
            name: name.to_string(),
            known: self.entries.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The table `multimix zoo list` prints: name, source, data set, top-1, repository.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .entries()
            .map(|e| {
                [
                    e.name.clone(),
                    e.source.as_str().to_string(),
                    e.dataset.clone(),
                    e.metrics
                        .get("top1")
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{}@{}", e.repo, e.revision),
                ]
            })
            .collect();
        let header = ["name", "source", "dataset", "top1", "repository"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String; 5]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&header);
        for row in &rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = r#"
name = "tiny.test"
architecture = "vit_tiny_patch16_224"
source = "multimix"
repo = "me/tiny"
file = "model.safetensors"
dataset = "fashion-mnist"
license = "apache-2.0"
[metrics]
top1 = 91.5
"#;

    #[test]
    fn builtin_cards_are_valid_and_cover_models_dir() {
        let zoo = Zoo::builtin().unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        assert_eq!(
            Zoo::from_dir(&dir).unwrap().entries,
            zoo.entries,
            "every card is embedded"
        );
        let names: Vec<&str> = zoo.entries().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "resnet18.a1_in1k",
                "resnet50.a1_in1k",
                "vit_base_patch16_224.augreg2_in21k_ft_in1k",
                "vit_small_patch16_224.augreg_in21k_ft_in1k",
                "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
            ]
        );
        for e in zoo.entries() {
            assert_eq!(e.repo.to_string(), format!("timm/{}", e.name));
            assert!(
                e.name.starts_with(&format!("{}.", e.architecture)),
                "{}",
                e.name
            );
            assert_eq!(e.source, Source::Timm);
            assert!(e.metrics.contains_key("top1") && e.metrics.contains_key("top5"));
        }
        let vit = zoo
            .entry("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
            .unwrap();
        assert_eq!(vit.model_args["embed_dim"], 192);
        assert_eq!(vit.metrics["top1"], 75.454);
    }

    #[test]
    fn bad_cards_are_named() {
        let err = ZooEntry::parse(&CARD.replace("me/tiny", "me tiny"), "x.toml").unwrap_err();
        assert!(err.to_string().contains("x.toml"), "{err}");
        let err = ZooEntry::parse(
            &CARD.replace("model.safetensors", "*.safetensors"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a pattern"), "{err}");
        let err = ZooEntry::parse(&CARD.replace("model.safetensors", "m.bin"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only .safetensors"), "{err}");
        let with_sha = CARD.replace("dataset", "sha256 = \"abc\"\ndataset");
        let err = ZooEntry::parse(&with_sha, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex"), "{err}");
        let err = ZooEntry::parse(&CARD.replace("license", "licence"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml") && err.contains("licence"), "{err}");
        let twice = [("a.toml".to_string(), CARD), ("b.toml".to_string(), CARD)];
        let err = Zoo::from_cards(twice).unwrap_err().to_string();
        assert!(err.contains("a.toml") && err.contains("b.toml"), "{err}");
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let zoo = Zoo::from_cards([("c.toml".to_string(), CARD)]).unwrap();
        let err = zoo.entry("nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("tiny.test"), "{err}");
        let e = zoo.entry("tiny.test").unwrap();
        assert_eq!(e.revision, DEFAULT_REVISION);
        assert_eq!(e.sha256, None);
    }

    #[test]
    fn table_has_one_aligned_row_per_entry() {
        let table = Zoo::builtin().unwrap().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[0].starts_with("name"));
        let col = lines[0].find("source").unwrap();
        assert!(
            lines[1..].iter().all(|l| &l[col..col + 4] == "timm"),
            "{table}"
        );
        assert!(table.contains("75.45") && table.contains("timm/resnet50.a1_in1k@main"));
    }
}
