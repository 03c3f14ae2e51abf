//! Download from and upload to a Hugging Face hub, through the `hf-hub` 1.0 crate.
//!
//! Everything hf-hub would read from the environment is read here instead ([`HubOptions`]) and
//! passed to it explicitly: `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME`, `HF_TOKEN` (or the token
//! file under `HF_HOME`) and `HF_HUB_OFFLINE`, which hf-hub 1.0 does not know (offline maps to
//! its per-call `local_files_only`). The cache is huggingface_hub's layout
//! (`models--owner--name/{blobs,snapshots,refs}`), shared with Python tools.
//!
//! Downloads are checked after hf-hub returns: a file whose size differs from what the server
//! announced, or whose sha256 differs from its LFS `ETag`, is removed from the cache (hf-hub
//! 1.0 writes an error page returned to its GET into the cache as if it were the file), and a
//! transfer that fails midway leaves no `.incomplete` file behind.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::repository::{AddSource, CommitOperation, RepoType, RepoTypeAny, RepoTypeModel};
use hf_hub::{HFClient, HFClientSync, HFError};
use sha2::{Digest, Sha256};

use crate::progress::{TransferLog, TransferRecord};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The revision downloads use when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// The files a checkpoint repository needs: timm's config and the weights.
pub const CHECKPOINT_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// Values of boolean environment variables taken as true (huggingface_hub's set).
const TRUE_VALUES: [&str; 4] = ["1", "on", "yes", "true"];

/// An access token. It is never printed: `Debug` shows `Token(<redacted>)` and there is no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text, trimmed; `None` when empty.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| Self(text.to_string()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Base URL of the hub (`HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`]).
    pub endpoint: String,
    /// The download cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Access token (`HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`).
    pub token: Option<Token>,
    /// Serve from the cache only, never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Retries of a request that failed transiently (connection refused, 5xx, timeout).
    pub retries: usize,
}

impl HubOptions {
    /// Options from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Options from environment variables given by `var` (empty values count as unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = var("HOME").map(PathBuf::from);
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .map(|cache| cache.join("huggingface"))
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("token")));
        let token = var("HF_TOKEN")
            .and_then(|t| Token::new(&t))
            .or_else(|| Token::new(&std::fs::read_to_string(token_file?).ok()?));
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| TRUE_VALUES.contains(&v.trim().to_ascii_lowercase().as_str()));
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token,
            offline,
            progress: true,
            retries: 3,
        }
    }
}

/// A repository id `owner/name`, checked against the hub's naming rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoId {
    owner: String,
    name: String,
}

impl RepoId {
    /// Parses `owner/name`: letters, digits, `-`, `_` and `.`, neither starting nor ending with
    /// `-` or `.`, without `--` or `..`, at most 96 characters per part.
    pub fn parse(id: &str) -> Result<Self, HubError> {
        let invalid = |reason: &str| HubError::InvalidRepoId {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let (owner, name) = id
            .split_once('/')
            .ok_or_else(|| invalid("expected owner/name"))?;
        for part in [owner, name] {
            if part.is_empty() || part.contains('/') {
                return Err(invalid("expected owner/name"));
            }
            if part.len() > 96 {
                return Err(invalid("a part is longer than 96 characters"));
            }
            if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(
                    "only letters, digits, '-', '_' and '.' are allowed",
                ));
            }
            if part.starts_with(['-', '.'])
                || part.ends_with(['-', '.'])
                || part.contains("--")
                || part.contains("..")
            {
                return Err(invalid(
                    "a part may not start or end with '-' or '.', nor contain '--' or '..'",
                ));
            }
        }
        Ok(Self {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }

    /// The owner (user or organization).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The repository name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The repository's folder in the cache (`models--owner--name`).
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Why a hub operation failed; every variant names the repository and, where there is one, the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repository id is malformed.
    #[error("invalid repository id `{id}`: {reason}")]
    InvalidRepoId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The revision is malformed.
    #[error("invalid revision `{revision}`: expected a branch, tag or commit hash")]
    InvalidRevision {
        /// The revision as given.
        revision: String,
    },
    /// Offline, and the cache does not hold the file.
    #[error(
        "{repo}@{revision}: {file} is not in the cache {} and offline mode is on \
         (HF_HUB_OFFLINE / --offline): download it once online",
        cache_dir.display()
    )]
    NotCached {
        /// The repository.
        repo: RepoId,
        /// The revision asked for.
        revision: String,
        /// The file.
        file: String,
        /// The cache searched.
        cache_dir: PathBuf,
    },
    /// The repository has no such file at that revision.
    #[error("{repo}@{revision} has no file {file} (404 from {endpoint})")]
    FileNotFound {
        /// The repository.
        repo: RepoId,
        /// The revision.
        revision: String,
        /// The file.
        file: String,
        /// The hub asked.
        endpoint: String,
    },
    /// The repository or revision does not exist, or is private and the token cannot see it.
    #[error(
        "repository {repo}@{revision} not found on {endpoint} (private repositories need a token \
         in HF_TOKEN)"
    )]
    RepoNotFound {
        /// The repository.
        repo: RepoId,
        /// The revision.
        revision: String,
        /// The hub asked.
        endpoint: String,
    },
    /// The hub refused the token or asked for one.
    #[error("{repo}: the hub at {endpoint} refused access ({status}); set HF_TOKEN to a token with access")]
    Unauthorized {
        /// The repository.
        repo: RepoId,
        /// The hub asked.
        endpoint: String,
        /// The HTTP status, as text.
        status: String,
    },
    /// A transferred file did not match what the hub announced; it was removed from the cache.
    #[error(
        "{repo}: download of {file} is corrupt ({reason}); it was removed from the cache, retry"
    )]
    Corrupt {
        /// The repository.
        repo: RepoId,
        /// The file.
        file: String,
        /// What did not match.
        reason: String,
    },
    /// The connection broke while a file was being received; nothing of it was kept.
    #[error(
        "{repo}: the transfer of {file} was cut ({source}); nothing was kept in the cache, retry"
    )]
    Interrupted {
        /// The repository.
        repo: RepoId,
        /// The file or files.
        file: String,
        /// hf-hub's error.
        #[source]
        source: Box<HFError>,
    },
    /// The data set repository or revision does not exist, or is private.
    #[error(
        "dataset repository {repo}@{revision} not found on {endpoint} (the id is owner/name as in \
         huggingface.co/datasets/owner/name; private repositories need a token in HF_TOKEN)"
    )]
    DatasetNotFound {
        /// The repository.
        repo: RepoId,
        /// The revision.
        revision: String,
        /// The hub asked.
        endpoint: String,
    },
    /// A data set repository holds no parquet file.
    #[error(
        "dataset repository {repo}@{revision} holds no parquet file (found: {found}); multimix \
         reads data sets stored as parquet: try the hub's conversion, \
         hub:{repo}@refs/convert/parquet"
    )]
    NoParquet {
        /// The repository.
        repo: RepoId,
        /// The revision.
        revision: String,
        /// The files found, summarized.
        found: String,
    },
    /// A data set repository's parquet files have no split of that name.
    #[error("dataset repository {repo}@{revision} has no {split} split among its parquet files (found: {found})")]
    MissingSplit {
        /// The repository.
        repo: RepoId,
        /// The revision.
        revision: String,
        /// The split (or splits) looked for.
        split: String,
        /// The parquet files found, summarized.
        found: String,
    },
    /// The parquet files belong to several configurations and none was chosen, or not the one
    /// asked for.
    #[error(
        "dataset repository {repo} has {problem} (configurations: {configs}); choose one with \
         hub:{repo}/CONFIG"
    )]
    Config {
        /// The repository.
        repo: RepoId,
        /// What is wrong.
        problem: String,
        /// The configurations found.
        configs: String,
    },
    /// A file's sha256 differs from the one expected (a zoo card's).
    #[error("{repo}: {file} has sha256 {actual}, expected {expected}")]
    ChecksumMismatch {
        /// The repository.
        repo: RepoId,
        /// The file.
        file: String,
        /// The sha256 expected.
        expected: String,
        /// The sha256 of the file.
        actual: String,
    },
    /// A local file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The hub client could not be configured (endpoint not a URL, ...).
    #[error("cannot use the hub at {endpoint}: {source}")]
    Client {
        /// The endpoint.
        endpoint: String,
        /// hf-hub's error.
        #[source]
        source: Box<HFError>,
    },
    /// Any other failure of a transfer (network, server error, ...).
    #[error("{repo}: {action} failed: {source}")]
    Transfer {
        /// The repository.
        repo: RepoId,
        /// What was being done (`downloading config.json`, `committing`, ...).
        action: String,
        /// hf-hub's error.
        #[source]
        source: Box<HFError>,
    },
}

/// A file to upload: where it goes in the repository and where it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// Path inside the repository.
    pub path_in_repo: String,
    /// The local file.
    pub local: PathBuf,
}

/// A connection to a hub.
pub struct Hub {
    client: HFClientSync,
    options: HubOptions,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("options", &self.options)
            .finish()
    }
}

impl Hub {
    /// A client for `options`; makes no request.
    pub fn new(options: HubOptions) -> Result<Self, HubError> {
        let endpoint = options.endpoint.trim_end_matches('/').to_string();
        let mut builder = HFClient::builder()
            .endpoint(endpoint.clone())
            .cache_dir(options.cache_dir.clone())
            .cache_enabled(true)
            .retry_max_attempts(options.retries);
        if let Some(Token(token)) = &options.token {
            builder = builder.token(token.clone());
        }
        let client = builder.build_sync().map_err(|source| HubError::Client {
            endpoint,
            source: Box::new(source),
        })?;
        Ok(Self { client, options })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// Download one file (or take it from the cache) and return its path in the cache.
    pub fn download_file(
        &self,
        repo: &RepoId,
        revision: &str,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        check_revision(revision)?;
        let log = TransferLog::new(file, self.options.progress);
        let before = self.incomplete_blobs(RepoTypeAny::Model, repo);
        let result = self
            .client
            .model(repo.owner(), repo.name())
            .download_file()
            .filename(file)
            .revision(revision)
            .local_files_only(self.options.offline)
            .progress(log.handler())
            .send();
        let path = result.map_err(|e| {
            self.remove_new_incomplete(RepoTypeAny::Model, repo, &before);
            self.classify(e, repo, revision, file)
        })?;
        log.finish();
        self.verify(repo, file, &path, log.record(file))?;
        Ok(path)
    }

    /// Download `files` of one revision into one snapshot directory and return it.
    ///
    /// The revision is resolved to a commit once (so every file comes from the same commit) and
    /// the files already in the cache at that commit are not transferred again.
    pub fn download_files(
        &self,
        repo: &RepoId,
        revision: &str,
        files: &[&str],
    ) -> Result<PathBuf, HubError> {
        self.snapshot(RepoTypeAny::Model, repo, revision, files)
    }

    /// [`Hub::download_files`] for a repository of type `kind`.
    fn snapshot(
        &self,
        kind: RepoTypeAny,
        repo: &RepoId,
        revision: &str,
        files: &[&str],
    ) -> Result<PathBuf, HubError> {
        check_revision(revision)?;
        let label = files.join(", ");
        let log = TransferLog::new(&label, self.options.progress);
        let before = self.incomplete_blobs(kind, repo);
        let result = self
            .client
            .repository(kind, repo.owner(), repo.name())
            .snapshot_download()
            .revision(revision)
            .allow_patterns(files.iter().map(|f| f.to_string()).collect())
            .local_files_only(self.options.offline)
            .progress(log.handler())
            .send();
        let dir = result.map_err(|e| {
            self.remove_new_incomplete(kind, repo, &before);
            self.classify(e, repo, revision, &label)
        })?;
        log.finish();
        for file in files {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(if self.options.offline {
                    HubError::NotCached {
                        repo: repo.clone(),
                        revision: revision.to_string(),
                        file: file.to_string(),
                        cache_dir: self.options.cache_dir.clone(),
                    }
                } else {
                    self.not_found(repo, revision, file)
                });
            }
            self.verify(repo, file, &path, log.record(file))?;
        }
        Ok(dir)
    }

    /// Download the parquet files of a data set repository (repo type dataset): the test split
    /// (`test`, else `validation`) and, when `with_train`, the train split, every shard of
    /// each, from the configuration `config` (needed only when there are several). See
    /// [`select_parquet`] for the layouts understood.
    pub fn download_dataset(
        &self,
        repo: &RepoId,
        revision: &str,
        config: Option<&str>,
        with_train: bool,
    ) -> Result<DatasetFiles, HubError> {
        check_revision(revision)?;
        let files = self.dataset_file_list(repo, revision)?;
        let layout = select_parquet(repo, revision, &files, config)?;
        let missing = |split: &str, found: &[String]| HubError::MissingSplit {
            repo: repo.clone(),
            revision: revision.to_string(),
            split: split.to_string(),
            found: summarize(found),
        };
        let parquet: Vec<String> = files
            .iter()
            .filter(|f| f.ends_with(".parquet"))
            .cloned()
            .collect();
        if with_train && layout.train.is_empty() {
            return Err(missing("train", &parquet));
        }
        if layout.test.is_empty() {
            return Err(missing("test (or validation)", &parquet));
        }
        let train = if with_train { layout.train } else { Vec::new() };
        let wanted: Vec<&str> = train
            .iter()
            .chain(&layout.test)
            .map(String::as_str)
            .collect();
        let dir = self.snapshot(RepoTypeAny::Dataset, repo, revision, &wanted)?;
        let paths = |files: &[String]| files.iter().map(|f| dir.join(f)).collect();
        Ok(DatasetFiles {
            train: paths(&train),
            test: paths(&layout.test),
            test_split: layout.test_split.to_string(),
        })
    }

    /// The files of a data set repository at `revision`: from the hub, or offline from the
    /// cached snapshot.
    fn dataset_file_list(&self, repo: &RepoId, revision: &str) -> Result<Vec<String>, HubError> {
        let handle = self.client.dataset(repo.owner(), repo.name());
        let not_found = || HubError::DatasetNotFound {
            repo: repo.clone(),
            revision: revision.to_string(),
            endpoint: self.endpoint().to_string(),
        };
        if self.options.offline {
            let dir = handle
                .snapshot_download()
                .revision(revision)
                .local_files_only(true)
                .send()
                .map_err(|e| self.classify(e, repo, revision, "the data set's files"))?;
            let mut files = Vec::new();
            list_files(&dir, "", &mut files)
                .map_err(|source| HubError::Io { path: dir, source })?;
            return Ok(files);
        }
        let info = handle
            .info()
            .revision(revision)
            .send()
            .map_err(|e| match e {
                HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => not_found(),
                other => self.classify(other, repo, revision, "the data set's file list"),
            })?;
        Ok(info
            .siblings
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.rfilename)
            .collect())
    }

    /// Download what a checkpoint needs ([`CHECKPOINT_FILES`]) and return the directory.
    pub fn download_checkpoint(&self, repo: &RepoId, revision: &str) -> Result<PathBuf, HubError> {
        self.download_files(repo, revision, &CHECKPOINT_FILES)
    }

    /// Create the repository if it does not exist, then upload `files` in one commit on `main`;
    /// returns the new commit's id when the hub reports one.
    pub fn push(
        &self,
        repo: &RepoId,
        files: &[UploadFile],
        private: bool,
        message: &str,
    ) -> Result<Option<String>, HubError> {
        for file in files {
            if !file.local.is_file() {
                return Err(HubError::Io {
                    path: file.local.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
        }
        let repo_id = repo.to_string();
        self.client
            .create_repository()
            .repo_id(&repo_id)
            .repo_type(RepoTypeModel)
            .private(private)
            .exist_ok(true)
            .send()
            .map_err(|e| self.classify_upload(e, repo, "creating the repository"))?;
        let operations = files
            .iter()
            .map(|f| CommitOperation::Add {
                path_in_repo: f.path_in_repo.clone(),
                source: AddSource::file(f.local.clone()),
            })
            .collect();
        let info = self
            .client
            .model(repo.owner(), repo.name())
            .create_commit()
            .operations(operations)
            .commit_message(message)
            .revision(DEFAULT_REVISION)
            .send()
            .map_err(|e| self.classify_upload(e, repo, "committing"))?;
        Ok(info.commit_oid)
    }

    /// Turn hf-hub's error for a download into one naming repository, revision and file.
    fn classify(&self, err: HFError, repo: &RepoId, revision: &str, file: &str) -> HubError {
        match err {
            HFError::LocalEntryNotFound { .. } => HubError::NotCached {
                repo: repo.clone(),
                revision: revision.to_string(),
                file: file.to_string(),
                cache_dir: self.options.cache_dir.clone(),
            },
            HFError::EntryNotFound { path, .. } => self.not_found(repo, revision, &path),
            HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => {
                HubError::RepoNotFound {
                    repo: repo.clone(),
                    revision: revision.to_string(),
                    endpoint: self.endpoint().to_string(),
                }
            }
            HFError::Request { ref source, .. } if source.is_body() || source.is_decode() => {
                HubError::Interrupted {
                    repo: repo.clone(),
                    file: file.to_string(),
                    source: Box::new(err),
                }
            }
            other => self.classify_upload(other, repo, &format!("downloading {file}")),
        }
    }

    /// Turn hf-hub's error into one naming the repository and what was being done.
    fn classify_upload(&self, err: HFError, repo: &RepoId, action: &str) -> HubError {
        match err {
            HFError::AuthRequired { context } | HFError::Forbidden { context } => {
                HubError::Unauthorized {
                    repo: repo.clone(),
                    endpoint: self.endpoint().to_string(),
                    status: context.status.to_string(),
                }
            }
            source => HubError::Transfer {
                repo: repo.clone(),
                action: action.to_string(),
                source: Box::new(source),
            },
        }
    }

    fn not_found(&self, repo: &RepoId, revision: &str, file: &str) -> HubError {
        HubError::FileNotFound {
            repo: repo.clone(),
            revision: revision.to_string(),
            file: file.to_string(),
            endpoint: self.endpoint().to_string(),
        }
    }

    fn endpoint(&self) -> &str {
        self.options.endpoint.trim_end_matches('/')
    }

    /// The blobs folder of a repository of type `kind` (`{models,datasets}--owner--name`).
    fn blobs_dir(&self, kind: RepoTypeAny, repo: &RepoId) -> PathBuf {
        let folder = format!("{}--{}--{}", kind.plural(), repo.owner(), repo.name());
        self.options.cache_dir.join(folder).join("blobs")
    }

    /// The partial downloads hf-hub left in the repository's blobs folder.
    fn incomplete_blobs(&self, kind: RepoTypeAny, repo: &RepoId) -> BTreeSet<PathBuf> {
        std::fs::read_dir(self.blobs_dir(kind, repo))
            .into_iter()
            .flatten()
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "incomplete"))
            .collect()
    }

    /// Remove the partial downloads a failed call left (not those that were there before it).
    ///
    /// A download of the same repository by another process during the call would lose its
    /// partial file too; hf-hub then fails its rename and that download reports an error, so no
    /// broken file results.
    fn remove_new_incomplete(&self, kind: RepoTypeAny, repo: &RepoId, before: &BTreeSet<PathBuf>) {
        for path in self.incomplete_blobs(kind, repo).difference(before) {
            // A file that cannot be removed is ignored: hf-hub never serves `.incomplete` files.
            let _ = std::fs::remove_file(path);
        }
    }

    /// Check a file just transferred: an LFS file (whose `ETag` is its sha256) against that
    /// hash, another against the size the hub announced; remove it from the cache if it fails.
    fn verify(
        &self,
        repo: &RepoId,
        file: &str,
        path: &Path,
        record: TransferRecord,
    ) -> Result<(), HubError> {
        if !record.transferred {
            return Ok(());
        }
        let io = |source| HubError::Io {
            path: path.to_path_buf(),
            source,
        };
        let blob = std::fs::canonicalize(path).map_err(io)?;
        let size = std::fs::metadata(&blob).map_err(io)?.len();
        let etag = blob
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        // An LFS file's ETag is its sha256, which settles it; other files have their size.
        let reason = if is_sha256(&etag) {
            let actual = sha256_file(&blob)?;
            (actual != etag).then(|| format!("sha256 {actual}, the hub announced {etag}"))
        } else if record.total_bytes > 0 && size != record.total_bytes {
            Some(format!(
                "{size} bytes received, the hub announced {}",
                record.total_bytes
            ))
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => {
                // Best effort: the error below says the file is bad either way.
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(&blob);
                Err(HubError::Corrupt {
                    repo: repo.clone(),
                    file: file.to_string(),
                    reason,
                })
            }
        }
    }
}

/// The parquet files of a data set's splits, local paths in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFiles {
    /// The train split's shards, in order (empty when not asked for).
    pub train: Vec<PathBuf>,
    /// The test split's shards, in order.
    pub test: Vec<PathBuf>,
    /// The split used as test: `test`, or `validation` when there is no test split.
    pub test_split: String,
}

/// The parquet files of a repository's splits, paths in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetLayout {
    /// The train split's shards, sorted.
    pub train: Vec<String>,
    /// The test (or validation) split's shards, sorted.
    pub test: Vec<String>,
    /// `test`, or `validation` when there is no test split.
    pub test_split: &'static str,
}

/// Split names and their synonyms, as HF `datasets` recognizes them in file and folder names.
const SPLIT_KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "val", "dev"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The split a repository path names: the last word of the path (words are split at `/`,
/// `-`, `_`, `.`, spaces and digits) that is a split keyword. `data/train-00000-of-00002.parquet`,
/// `mnist/train/0000.parquet` and `plain_text/test-00000-of-00001.parquet` name train, train,
/// test.
pub fn split_of(path: &str) -> Option<&'static str> {
    let stem = path.strip_suffix(".parquet").unwrap_or(path);
    stem.split(|c: char| !c.is_ascii_alphabetic())
        .rev()
        .find_map(|word| {
            let word = word.to_ascii_lowercase();
            SPLIT_KEYWORDS
                .iter()
                .find(|(_, keys)| keys.contains(&word.as_str()))
                .map(|(split, _)| *split)
        })
}

/// The configuration a repository path belongs to: its first folder, unless that folder is
/// `data` or names a split (`{config}/train-*.parquet`, `{config}/train/*.parquet`).
fn config_of(path: &str) -> Option<&str> {
    let (first, _) = path.split_once('/')?;
    (first != "data" && split_of(first).is_none()).then_some(first)
}

/// At most eight names, then how many more.
fn summarize(files: &[String]) -> String {
    if files.is_empty() {
        return "nothing".into();
    }
    let mut out = files.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if files.len() > 8 {
        out.push_str(&format!(" and {} more", files.len() - 8));
    }
    out
}

/// Choose the parquet files of the train and test splits among a data set repository's files.
///
/// Layouts: `data/{split}-00000-of-00001.parquet` (what `push_to_hub` writes),
/// `{config}/{split}-*.parquet`, `{split}/*.parquet`, `{config}/{split}/*.parquet` (the hub's
/// `refs/convert/parquet`); several shards per split. The test split is `test`, else
/// `validation`. With several configurations, `config` chooses one (`default` is taken when
/// there is one and none is chosen).
pub fn select_parquet(
    repo: &RepoId,
    revision: &str,
    files: &[String],
    config: Option<&str>,
) -> Result<ParquetLayout, HubError> {
    let mut parquet: Vec<&String> = files.iter().filter(|f| f.ends_with(".parquet")).collect();
    if parquet.is_empty() {
        return Err(HubError::NoParquet {
            repo: repo.clone(),
            revision: revision.to_string(),
            found: summarize(files),
        });
    }
    parquet.sort();
    let configs: BTreeSet<&str> = parquet.iter().filter_map(|f| config_of(f)).collect();
    let config_error = |problem: String| HubError::Config {
        repo: repo.clone(),
        problem,
        configs: configs.iter().copied().collect::<Vec<_>>().join(", "),
    };
    let chosen = match config {
        Some(c) if configs.contains(c) => Some(c),
        Some(c) => return Err(config_error(format!("no configuration `{c}`"))),
        None if configs.len() <= 1 => configs.first().copied(),
        None if configs.contains("default") => Some("default"),
        None => return Err(config_error("several configurations".into())),
    };
    let of_split = |split: &str| -> Vec<String> {
        parquet
            .iter()
            .filter(|f| config_of(f) == chosen && split_of(f) == Some(split))
            .map(|f| f.to_string())
            .collect()
    };
    let test = of_split("test");
    let (test, test_split) = if test.is_empty() {
        (of_split("validation"), "validation")
    } else {
        (test, "test")
    };
    Ok(ParquetLayout {
        train: of_split("train"),
        test,
        test_split,
    })
}

/// Append the files under `dir` to `out`, as paths relative to it with `/` (`prefix` is the
/// path of `dir` so far).
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let rel = format!("{prefix}{name}");
        if path.is_dir() {
            list_files(&path, &format!("{rel}/"), out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Refuse revisions that cannot name a branch, tag or commit.
fn check_revision(revision: &str) -> Result<(), HubError> {
    let bad = revision.is_empty()
        || revision.contains("..")
        || revision
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(HubError::InvalidRevision {
            revision: revision.to_string(),
        });
    }
    Ok(())
}

/// Whether `s` has the form of a sha256 digest (64 lowercase hex digits).
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let io = |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Check a file against an expected sha256 (lowercase or uppercase hex).
pub fn verify_sha256(
    repo: &RepoId,
    file: &str,
    path: &Path,
    expected: &str,
) -> Result<(), HubError> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(HubError::ChecksumMismatch {
            repo: repo.clone(),
            file: file.to_string(),
            expected: expected.to_ascii_lowercase(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn options_follow_the_environment() {
        let o = HubOptions::from_vars(vars(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_HOME", "/x/hf"),
            ("HF_TOKEN", " hf_abc "),
            ("HF_HUB_OFFLINE", "1"),
        ]));
        assert_eq!(o.endpoint, "http://127.0.0.1:9");
        assert_eq!(o.cache_dir, PathBuf::from("/x/hf/hub"));
        assert_eq!(o.token, Token::new("hf_abc"));
        assert!(o.offline);
        let o = HubOptions::from_vars(vars(&[
            ("HOME", "/home/u"),
            ("HF_HUB_OFFLINE", "0"),
            ("HF_TOKEN", ""),
        ]));
        assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(o.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(o.token, None);
        assert!(!o.offline);
        let o = HubOptions::from_vars(vars(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")]));
        assert_eq!(o.cache_dir, PathBuf::from("/c"));
    }

    #[test]
    fn token_file_under_hf_home_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let o = HubOptions::from_vars(vars(&[("HF_HOME", dir.path().to_str().unwrap())]));
        assert_eq!(o.token, Token::new("hf_file"));
        let other = dir.path().join("other");
        std::fs::write(&other, "hf_other").unwrap();
        let o = HubOptions::from_vars(vars(&[
            ("HF_HOME", dir.path().to_str().unwrap()),
            ("HF_TOKEN_PATH", other.to_str().unwrap()),
        ]));
        assert_eq!(o.token, Token::new("hf_other"));
    }

    #[test]
    fn token_is_never_shown() {
        let o = HubOptions {
            token: Token::new("hf_secret"),
            ..HubOptions::from_vars(vars(&[]))
        };
        let shown = format!("{o:?} {:?}", Hub::new(o.clone()).unwrap());
        assert!(!shown.contains("hf_secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        let id = RepoId::parse("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k").unwrap();
        assert_eq!(id.owner(), "timm");
        assert_eq!(
            id.cache_folder(),
            "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
        );
        for bad in [
            "noslash", "a/b/c", "/b", "a/", "a/b c", "a/-b", "a/b..c", "a--x/b",
        ] {
            let err = RepoId::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    fn layout(files: &[&str], config: Option<&str>) -> Result<ParquetLayout, HubError> {
        let files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
        select_parquet(&RepoId::parse("o/n").unwrap(), "main", &files, config)
    }

    #[test]
    fn parquet_splits_in_the_usual_layouts() {
        // push_to_hub's layout, shards out of order in the listing.
        let l = layout(
            &[
                "README.md",
                "data/train-00001-of-00002.parquet",
                "data/test-00000-of-00001.parquet",
                "data/train-00000-of-00002.parquet",
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            l.train,
            [
                "data/train-00000-of-00002.parquet",
                "data/train-00001-of-00002.parquet"
            ]
        );
        assert_eq!(l.test, ["data/test-00000-of-00001.parquet"]);
        assert_eq!(l.test_split, "test");
        // One configuration folder, validation as the test split.
        let l = layout(
            &[
                "plain_text/train-00000-of-00001.parquet",
                "plain_text/validation-0.parquet",
            ],
            None,
        )
        .unwrap();
        assert_eq!(l.train, ["plain_text/train-00000-of-00001.parquet"]);
        assert_eq!(
            (l.test[0].as_str(), l.test_split),
            ("plain_text/validation-0.parquet", "validation")
        );
        // Split folders, and the hub's parquet conversion with two configurations.
        let l = layout(
            &[
                "train/0000.parquet",
                "train/0001.parquet",
                "test/0000.parquet",
            ],
            None,
        )
        .unwrap();
        assert_eq!((l.train.len(), l.test.len()), (2, 1));
        let converted = [
            "a/train/0000.parquet",
            "a/test/0000.parquet",
            "default/train/0000.parquet",
            "default/test/0000.parquet",
        ];
        let l = layout(&converted, None).unwrap();
        assert_eq!(l.train, ["default/train/0000.parquet"]);
        let l = layout(&converted, Some("a")).unwrap();
        assert_eq!(l.test, ["a/test/0000.parquet"]);
    }

    #[test]
    fn parquet_selection_errors_list_what_was_found() {
        let err = layout(&["README.md", "mnist.py"], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no parquet") && err.contains("README.md, mnist.py"),
            "{err}"
        );
        let err = layout(&["a/train/0.parquet", "b/train/0.parquet"], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("configurations: a, b") && err.contains("hub:o/n/CONFIG"),
            "{err}"
        );
        let err = layout(&["a/train/0.parquet"], Some("z"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no configuration `z`"), "{err}");
        let l = layout(&["data/unsupervised-0.parquet"], None).unwrap();
        assert!(l.train.is_empty() && l.test.is_empty());
        assert_eq!(split_of("mnist/mnist-train.parquet"), Some("train"));
        assert_eq!(split_of("data/other-0.parquet"), None);
    }

    #[test]
    fn revisions_are_checked() {
        assert!(check_revision("main").is_ok());
        assert!(check_revision("refs/pr/1").is_ok());
        for bad in ["", "a b", "../x"] {
            assert!(check_revision(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        // FIPS 180-2 test vector for "abc".
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&path).unwrap(), abc);
        let repo = RepoId::parse("o/n").unwrap();
        assert!(verify_sha256(&repo, "f", &path, &abc.to_uppercase()).is_ok());
        let err = verify_sha256(&repo, "f", &path, &"0".repeat(64)).unwrap_err();
        assert!(err.to_string().contains(abc), "{err}");
    }
}
