//! Model URIs: `file:///dir` for a directory on disk (the model cache volume), `hf://org/name`
//! for the Hugging Face Hub (downloaded into the cache; needs a network).

use std::path::{Path, PathBuf};

use super::BackendError;

/// The three files a BERT-family sentence-embedding model needs.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";

/// Finds (and for `hf://`, downloads) the model files of `uri`.
pub fn resolve_model(uri: &str, cache: &Path) -> Result<ModelFiles, BackendError> {
    if let Some(dir) = uri.strip_prefix("file://") {
        from_dir(uri, Path::new(dir))
    } else if let Some(id) = uri.strip_prefix("hf://") {
        from_hub(uri, id, cache)
    } else {
        Err(BackendError::Files(format!(
            "--model-uri `{uri}`: expected file:///path/to/dir or hf://org/name[@revision]"
        )))
    }
}

fn from_dir(uri: &str, dir: &Path) -> Result<ModelFiles, BackendError> {
    let files = ModelFiles {
        config: dir.join(CONFIG),
        weights: dir.join(WEIGHTS),
        tokenizer: dir.join(TOKENIZER),
    };
    let missing: Vec<_> = [&files.config, &files.weights, &files.tokenizer]
        .into_iter()
        .filter(|p| !p.is_file())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if missing.is_empty() {
        Ok(files)
    } else {
        Err(BackendError::Files(format!(
            "--model-uri `{uri}`: {} missing in {} (a model directory holds {CONFIG}, {WEIGHTS} and {TOKENIZER})",
            missing.join(", "),
            dir.display()
        )))
    }
}

fn from_hub(uri: &str, id: &str, cache: &Path) -> Result<ModelFiles, BackendError> {
    let (name, revision) = id.split_once('@').unwrap_or((id, "main"));
    if name.split('/').count() != 2 || name.split('/').any(str::is_empty) {
        return Err(BackendError::Files(format!(
            "--model-uri `{uri}`: expected hf://org/name[@revision]"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(false)
        .build()
        .map_err(|e| BackendError::Files(format!("--model-uri `{uri}`: {e}")))?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        name.to_owned(),
        hf_hub::RepoType::Model,
        revision.to_owned(),
    ));
    let get = |file: &str| {
        repo.get(file).map_err(|e| {
            BackendError::Files(format!(
                "--model-uri `{uri}`: downloading {file} from the Hugging Face Hub failed ({e}); \
                 without a network, put the model in a directory and use file://"
            ))
        })
    };
    Ok(ModelFiles {
        config: get(CONFIG)?,
        weights: get(WEIGHTS)?,
        tokenizer: get(TOKENIZER)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_the_files_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG), "{}").unwrap();
        let uri = format!("file://{}", dir.path().display());
        let e = resolve_model(&uri, dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.safetensors, tokenizer.json missing"), "{e}");
    }

    #[test]
    fn unknown_schemes_are_rejected_with_the_flag_named() {
        let e = resolve_model("s3://bucket/model", Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--model-uri") && e.contains("hf://"), "{e}");
        let e = resolve_model("hf://just-a-name", Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hf://org/name"), "{e}");
    }
}
