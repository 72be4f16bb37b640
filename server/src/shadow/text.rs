//! Comparing generated texts for shadow tests: the copy's body, the text of an answer, and the
//! agreement of two texts (equal, or close by normalised edit distance). Pure.

use serde_json::Value;

/// Characters of each text compared at most: the edit distance takes time quadratic in the
/// length, and two answers that agree on their first 8192 characters agree for a shadow test.
pub const MAX_COMPARED_CHARS: usize = 8192;

/// The body of a mirrored generation request: the primary's, answered whole (not streamed) so
/// the shadow's text can be read in one piece.
pub fn copy_body(body: &Value) -> Value {
    let mut copy = body.clone();
    if let Some(o) = copy.as_object_mut() {
        o.insert("stream".into(), Value::Bool(false));
        o.remove("stream_options");
    }
    copy
}

/// The generated text of an OpenAI chat or completions answer (its first choice).
pub fn answer_text(answer: &Value) -> Option<String> {
    let choice = answer.get("choices")?.get(0)?;
    choice
        .pointer("/message/content")
        .or_else(|| choice.get("text"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Whether the shadow's text agrees with the primary's: equal when `threshold` is 1 (or more),
/// else [`similarity`] at least `threshold`.
pub fn text_agrees(primary: &str, shadow: &str, threshold: f64) -> bool {
    if threshold >= 1.0 {
        return primary == shadow;
    }
    primary == shadow || similarity(primary, shadow) >= threshold
}

/// 1 − (Levenshtein distance in characters ÷ the longer text's length): 1 for equal texts,
/// 0 for texts with nothing in common. Each text counts its first [`MAX_COMPARED_CHARS`].
pub fn similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().take(MAX_COMPARED_CHARS).collect();
    let b: Vec<char> = b.chars().take(MAX_COMPARED_CHARS).collect();
    let longer = a.len().max(b.len());
    if longer == 0 {
        return 1.0;
    }
    1.0 - levenshtein(&a, &b) as f64 / longer as f64
}

/// Edits (insertions, deletions, substitutions) that turn `a` into `b`; two rows of the table.
fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn similarity_is_one_minus_the_normalised_edit_distance() {
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("kitten", "kitten"), 1.0);
        // kitten → sitting: 3 edits over 7 characters.
        assert!((similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-9);
        assert_eq!(similarity("abc", ""), 0.0);
        assert_eq!(similarity("naïve", "naive"), 0.8, "characters, not bytes");
    }

    #[test]
    fn exact_by_default_and_close_enough_below_one() {
        assert!(text_agrees("Paris.", "Paris.", 1.0));
        assert!(!text_agrees("Paris.", "Paris!", 1.0));
        assert!(text_agrees("The capital is Paris.", "The capital is Paris!", 0.9));
        assert!(!text_agrees("The capital is Paris.", "Berlin", 0.9));
    }

    #[test]
    fn the_copy_is_not_streamed_and_answers_give_their_text() {
        let body =
            json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}, "seed": 1});
        let copy = copy_body(&body);
        assert_eq!(copy["stream"], false);
        assert!(copy.get("stream_options").is_none());
        assert_eq!(copy["seed"], 1);
        let chat = json!({"choices": [{"message": {"role": "assistant", "content": "hi"}}]});
        assert_eq!(answer_text(&chat).as_deref(), Some("hi"));
        let completion = json!({"choices": [{"text": "there"}]});
        assert_eq!(answer_text(&completion).as_deref(), Some("there"));
        assert_eq!(answer_text(&json!({"error": {}})), None);
    }
}
