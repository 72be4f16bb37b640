//! `prometheus` analysis checks: a templated PromQL query through prometheus-http-query, read
//! as a scalar or a one-sample vector. Anything else (unreachable, an error, no sample, several
//! samples, NaN) is inconclusive, never a pass.

use std::time::Duration;

use prometheus_http_query::{Client, response::Data};

/// The values of a query's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `{{namespace}}`.
    pub namespace: &'a str,
    /// `{{deployment}}`: the ModelDeployment's name.
    pub deployment: &'a str,
    /// `{{revision}}`: the candidate revision.
    pub revision: &'a str,
    /// `{{stableRevision}}`.
    pub stable_revision: &'a str,
}

/// Replaces the placeholders in `query`.
pub fn render(query: &str, p: &Placeholders<'_>) -> String {
    query
        .replace("{{namespace}}", p.namespace)
        .replace("{{deployment}}", p.deployment)
        .replace("{{revision}}", p.revision)
        .replace("{{stableRevision}}", p.stable_revision)
}

/// Runs `query` against the Prometheus at `base_url`; `Err` says why there is no value.
pub async fn query_value(base_url: &str, query: &str, timeout: Duration) -> Result<f64, String> {
    let http = prometheus_http_query::reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let client =
        Client::from(http, base_url).map_err(|e| format!("bad Prometheus address {base_url}: {e}"))?;
    let response = client
        .query(query)
        .get()
        .await
        .map_err(|e| format!("Prometheus at {base_url} did not answer: {e}"))?;
    let value = match response.data() {
        Data::Scalar(s) => s.value(),
        Data::Vector(v) if v.len() == 1 => v[0].sample().value(),
        Data::Vector(v) if v.is_empty() => return Err("the query returned no data".into()),
        Data::Vector(v) => {
            return Err(format!(
                "the query returned {} samples; aggregate it to one (for example with sum or max)",
                v.len()
            ));
        }
        Data::Matrix(_) => return Err("the query returned a range vector; use an instant query".into()),
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("the query returned {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_replaced() {
        let q = r#"sum(rate(x{namespace="{{namespace}}",deployment="{{deployment}}",revision="{{revision}}"}[1m])) / sum(rate(x{revision="{{stableRevision}}"}[1m]))"#;
        let out = render(
            q,
            &Placeholders {
                namespace: "search",
                deployment: "minilm",
                revision: "abc",
                stable_revision: "def",
            },
        );
        assert_eq!(
            out,
            r#"sum(rate(x{namespace="search",deployment="minilm",revision="abc"}[1m])) / sum(rate(x{revision="def"}[1m]))"#
        );
    }
}
