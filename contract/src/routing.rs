//! The routing file: written by the operator into the `<name>-routing` ConfigMap, one key per
//! revision, mounted at [`crate::paths::ROUTING_FILE`] and re-read by the server.

use serde::{Deserialize, Serialize, Serializer};

/// Where mirrored copies go and how many.
// Fields in alphabetical order: the operator wrote this file with `serde_json::json!`, whose keys
// come out sorted, and the same text keeps the ConfigMap's spec hash (no rewrite on upgrade).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorTarget {
    /// Share of requests copied, 0 to 100.
    #[serde(serialize_with = "whole_as_integer")]
    pub percent: f64,
    /// Base URL of the shadow Service (`http://name-shadow.ns.svc:8080`) or a full
    /// `/v1/embeddings` URL.
    pub url: String,
}

/// The routing file of one revision: `{"mirror": {"url", "percent"}}`, or `{"mirror": null}` for
/// a revision that mirrors nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingFile {
    /// The mirror target; None: no mirroring.
    #[serde(default)]
    pub mirror: Option<MirrorTarget>,
}

impl RoutingFile {
    /// Parses and checks the file's JSON; the error names the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(m) = &file.mirror {
            if !(0.0..=100.0).contains(&m.percent) {
                return Err(format!("mirror.percent: {} is outside 0 to 100", m.percent));
            }
            if !m.url.starts_with("http://") {
                return Err(format!("mirror.url: `{}` must start with http://", m.url));
            }
        }
        Ok(file)
    }

    /// The file's JSON, compact.
    pub fn to_json(&self) -> String {
        // Plain structs of strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The operator's percentages are whole numbers; they are written `10`, not `10.0`, as before,
/// so readers that take the percent as an integer keep working.
fn whole_as_integer<S: Serializer>(percent: &f64, s: S) -> Result<S::Ok, S::Error> {
    let whole = percent.fract() == 0.0 && (0.0..=100.0).contains(percent);
    if whole {
        // In 0..=100 and whole: the cast is exact.
        s.serialize_u64(*percent as u64)
    } else {
        s.serialize_f64(*percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_files_parse_and_bad_ones_name_the_field() {
        assert_eq!(RoutingFile::parse(r#"{"mirror":null}"#).unwrap().mirror, None);
        assert_eq!(RoutingFile::parse("{}").unwrap(), RoutingFile::default());
        let f = RoutingFile::parse(r#"{"mirror":{"url":"http://s:8080","percent":10}}"#).unwrap();
        assert_eq!(f.mirror.unwrap().percent, 10.0);
        let e = RoutingFile::parse(r#"{"mirror":{"url":"http://s","percent":120}}"#).unwrap_err();
        assert!(e.contains("mirror.percent"), "{e}");
        let e = RoutingFile::parse(r#"{"mirror":{"url":"ftp://s","percent":1}}"#).unwrap_err();
        assert!(e.contains("mirror.url"), "{e}");
    }

    #[test]
    fn written_as_the_operator_always_wrote_it() {
        assert_eq!(RoutingFile::default().to_json(), r#"{"mirror":null}"#);
        let file = RoutingFile {
            mirror: Some(MirrorTarget {
                url: "http://m-shadow.ns.svc:8080".into(),
                percent: 20.0,
            }),
        };
        let text = file.to_json();
        assert_eq!(
            text,
            r#"{"mirror":{"percent":20,"url":"http://m-shadow.ns.svc:8080"}}"#
        );
        assert_eq!(RoutingFile::parse(&text).unwrap(), file);
        let half = RoutingFile {
            mirror: Some(MirrorTarget {
                url: "http://s".into(),
                percent: 12.5,
            }),
        };
        assert_eq!(RoutingFile::parse(&half.to_json()).unwrap(), half);
    }
}
