//! The model card (`README.md`) of a pushed run: YAML front matter the hub reads (library,
//! license, tags, data set, metrics with their values in `model-index`) and a short text.
//!
//! Scalars are written as JSON strings and numbers, which are valid YAML, so no value can break
//! the front matter.

use std::fmt::Write as _;

use serde_json::Value;

use crate::config::TimmConfig;
use crate::remote::RepoId;

/// What the card says.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The repository the card is for.
    pub repo: RepoId,
    /// Architecture name.
    pub architecture: String,
    /// Number of classes.
    pub num_classes: usize,
    /// License of the weights.
    pub license: String,
    /// Data set of the evaluation (and training), when known.
    pub dataset: Option<String>,
    /// Metrics, sorted by name.
    pub metrics: Vec<(String, f64)>,
    /// Tags besides `image-classification`, `multimix` and the architecture.
    pub tags: Vec<String>,
}

impl ModelCard {
    /// A card for a run: the architecture from its `config.json`, the data set (`data`) and the
    /// metrics (every top-level floating-point field, e.g. `accuracy`, `ece`, `nll`) from its
    /// `report.json`, when it has one.
    pub fn for_run(repo: &RepoId, config: &TimmConfig, report: Option<&Value>) -> Self {
        let object = report.and_then(Value::as_object);
        let dataset = object
            .and_then(|r| r.get("data"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut metrics: Vec<(String, f64)> = object
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.is_f64())
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect();
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            repo: repo.clone(),
            architecture: config.architecture.clone(),
            num_classes: config.num_classes,
            license: config
                .pretrained_cfg
                .license
                .clone()
                .unwrap_or_else(|| "apache-2.0".to_string()),
            dataset,
            metrics,
            tags: Vec::new(),
        }
    }

    /// The `README.md` text.
    pub fn render(&self) -> String {
        let q = |s: &str| Value::from(s).to_string();
        let mut tags = vec![
            "image-classification".to_string(),
            "multimix".to_string(),
            self.architecture.clone(),
        ];
        tags.extend(self.tags.iter().cloned());
        let mut s = String::from("---\n");
        let _ = writeln!(s, "library_name: multimix");
        let _ = writeln!(s, "license: {}", q(&self.license));
        let _ = writeln!(s, "pipeline_tag: image-classification");
        s.push_str("tags:\n");
        for tag in &tags {
            let _ = writeln!(s, "- {}", q(tag));
        }
        if let Some(dataset) = &self.dataset {
            let _ = writeln!(s, "datasets:\n- {}", q(dataset));
        }
        if !self.metrics.is_empty() {
            s.push_str("metrics:\n");
            for (name, _) in &self.metrics {
                let _ = writeln!(s, "- {}", q(name));
            }
            let _ = writeln!(s, "model-index:\n- name: {}", q(&self.repo.to_string()));
            s.push_str("  results:\n  - task:\n      type: image-classification\n");
            if let Some(dataset) = &self.dataset {
                let _ = writeln!(
                    s,
                    "    dataset:\n      name: {0}\n      type: {0}",
                    q(dataset)
                );
            }
            s.push_str("    metrics:\n");
            for (name, value) in &self.metrics {
                let _ = writeln!(
                    s,
                    "    - type: {}\n      value: {}",
                    q(name),
                    Value::from(*value)
                );
            }
        }
        s.push_str("---\n\n");
        let _ = writeln!(s, "# {}\n", self.repo);
        let _ = writeln!(
            s,
            "A `{}` image classifier ({} classes) trained with \
             [multimix](https://github.com/multimix-rs/multimix){}.\n",
            self.architecture,
            self.num_classes,
            self.dataset
                .as_deref()
                .map(|d| format!(" on `{d}`"))
                .unwrap_or_default()
        );
        s.push_str(
            "The repository is a multimix run directory: `model.safetensors` (weights), \
             `config.json` (timm's layout) and `report.json` (the evaluation).\n\n",
        );
        if !self.metrics.is_empty() {
            s.push_str("## Evaluation (from `report.json`)\n\n| metric | value |\n|---|---|\n");
            for (name, value) in &self.metrics {
                let _ = writeln!(s, "| {name} | {value:.4} |");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "## Use\n\n```sh\nmultimix hub download {}\n```",
            self.repo
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> TimmConfig {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_tiny/config.json");
        TimmConfig::read(&path).unwrap()
    }

    /// The lines between the `---` fences.
    fn front_matter(card: &str) -> Vec<&str> {
        let mut lines = card.lines();
        assert_eq!(lines.next(), Some("---"));
        lines.take_while(|l| *l != "---").collect()
    }

    #[test]
    fn metrics_and_dataset_come_from_the_report() {
        let report = serde_json::json!({
            "data": "fashion-mnist",
            "test_images": 1000,
            "accuracy": 0.875,
            "ece": 0.031,
            "fgsm": {"accuracy": 0.2},
        });
        let repo = RepoId::parse("me/run").unwrap();
        let card = ModelCard::for_run(&repo, &config(), Some(&report));
        assert_eq!(card.dataset.as_deref(), Some("fashion-mnist"));
        assert_eq!(
            card.metrics,
            vec![("accuracy".to_string(), 0.875), ("ece".to_string(), 0.031)]
        );
        let text = card.render();
        let front = front_matter(&text);
        for expected in [
            "library_name: multimix",
            "license: \"apache-2.0\"",
            "- \"vit_tiny_patch16_224\"",
            "datasets:",
            "- \"fashion-mnist\"",
            "- \"accuracy\"",
            "    - type: \"ece\"",
            "      value: 0.031",
        ] {
            assert!(front.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(!front.iter().any(|l| l.contains("test_images")));
        assert!(text.contains("| accuracy | 0.8750 |"), "{text}");
        assert!(text.contains("multimix hub download me/run"));
    }

    #[test]
    fn a_run_without_report_still_has_a_card() {
        let repo = RepoId::parse("me/run").unwrap();
        let text = ModelCard::for_run(&repo, &config(), None).render();
        let front = front_matter(&text);
        assert!(front.contains(&"library_name: multimix"));
        assert!(!front
            .iter()
            .any(|l| l.starts_with("metrics") || l.starts_with("datasets")));
    }
}
