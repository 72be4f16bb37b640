//! Reading ModelDeployments from YAML manifests with errors that name the field.

use serde::de::DeserializeOwned;

use crate::{ModelDeployment, validate};

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("document {document}: not valid YAML: {source}")]
    Yaml {
        /// 1-based document number in the stream.
        document: usize,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A field has the wrong type or value.
    #[error("document {document}: {path}: {message}")]
    Field {
        /// 1-based document number in the stream.
        document: usize,
        /// Path of the offending field, e.g. `spec.scaling.stableWindow`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The object parsed but breaks a validation rule.
    #[error("document {document} ({name}): {source}")]
    Invalid {
        /// 1-based document number in the stream.
        document: usize,
        /// `metadata.name` of the object.
        name: String,
        /// The rules it breaks.
        #[source]
        source: crate::ValidationErrors,
    },
}

/// Deserializes `value` into `T`; on failure the error names the path of the bad field.
pub fn from_value<T: DeserializeOwned>(
    value: serde_yaml::Value,
    document: usize,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ManifestError::Field {
            document,
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// Every `ModelDeployment` in a (possibly multi-document) YAML stream, checked with
/// [`validate`]. Documents of other kinds are skipped.
pub fn model_deployments_from_yaml(text: &str) -> Result<Vec<ModelDeployment>, ManifestError> {
    let mut found = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
            .map_err(|source| ManifestError::Yaml { document, source })?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("ModelDeployment") {
            continue;
        }
        let md: ModelDeployment = from_value(value, document)?;
        validate(&md.spec).map_err(|source| ManifestError::Invalid {
            document,
            name: md.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        found.push(md);
    }
    Ok(found)
}
