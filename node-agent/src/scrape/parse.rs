//! A small parser for the Prometheus text exposition format (and the OpenMetrics text the server
//! emits): samples with labels, comments and metadata skipped. Malformed lines are counted, not
//! fatal, so one bad exporter line never hides the rest.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parsed exposition.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Lines that were neither comments nor valid samples.
    pub malformed: usize,
}

impl Exposition {
    /// Sum of every sample named `name` whose labels include `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// Samples named `name` whose labels include `filter`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Parses `text`.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Some(sample) => out.samples.push(sample),
            None => out.malformed += 1,
        }
    }
    out
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    // Value, then an optional timestamp (ignored).
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",…}`; returns the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return None;
        }
        let mut chars = s[eq + 1..].trim_start().char_indices();
        let value_start = s.len() - s[eq + 1..].trim_start().len();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(value_start + i + 1);
                break;
            } else {
                value.push(c);
            }
        }
        labels.insert(key.to_owned(), value);
        s = s[end?..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// Quantile `q` of a cumulative histogram given as `(upper bound, cumulative count)` pairs,
/// interpolated linearly inside the bucket, as Prometheus' `histogram_quantile` does. None
/// without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in &buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Above the last finite bucket: its bound is the best estimate.
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            let fraction = if in_bucket > 0.0 {
                (rank - lower_count) / in_bucket
            } else {
                1.0
            };
            return Some(lower_bound + (bound - lower_bound) * fraction);
        }
        lower_bound = bound;
        lower_count = count;
    }
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_escapes_and_special_values() {
        let e = parse(
            "# HELP x help\n# TYPE x counter\nx_total 3\ny{a=\"1\",b=\"q\\\"uote\"} 2.5 1700000000\n\
             z{le=\"+Inf\"} +Inf\nbroken{a=1} 2\n{} 3\n",
        );
        assert_eq!(e.samples.len(), 3);
        assert_eq!(e.malformed, 2);
        assert_eq!(e.sum("y", &[("b", "q\"uote")]), 2.5);
        assert!(e.samples[2].value.is_infinite());
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [(0.1, 50.0), (0.2, 90.0), (0.4, 100.0), (f64::INFINITY, 100.0)];
        assert!((histogram_quantile(0.5, &b).unwrap() - 0.1).abs() < 1e-9);
        assert!((histogram_quantile(0.7, &b).unwrap() - 0.15).abs() < 1e-9);
        assert!((histogram_quantile(0.95, &b).unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
    }
}
