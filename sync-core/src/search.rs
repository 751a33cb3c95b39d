//! What a search shows of each document it finds: highlighted snippets of the fields
//! that matched, in the document's own text (its diacritics, its NFC or NFD form), with
//! the matched words marked by their offsets in Unicode scalar values.
//!
//! Matching and ranking are FTS5's (see `Store::search`: every query word matches a
//! word of the text, the last one as a prefix); a word here is marked when its folded
//! form (see [`crate::store::fold_for_search`]) is a folded query word, or begins with
//! the last one.

use serde_json::{Value as Json, json};

use crate::store::fold_for_search;

/// Index rows one search looks at, at most: past this many matches, the best ranked
/// are kept.
pub const MAX_MATCHES: usize = 20_000;
/// Characters of context a snippet shows before its first marked word.
const CONTEXT_BEFORE: usize = 60;
/// The longest snippet, in characters.
const SNIPPET_CHARS: usize = 220;

/// One document a search found.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The document's stored JSON.
    pub document: Json,
    /// FTS5's BM25 score of its best matching row (lower is better).
    pub rank: f64,
    /// The annotations on it that matched and the reader may read (stored JSON).
    pub notes: Vec<Json>,
}

/// The query's words, folded as the index folds them.
pub fn query_words(query: &str) -> Vec<String> {
    fold_for_search(query)
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// A snippet of `text` around the words matching `words`, with their places marked:
/// `{"text", "marks": [[start, end], …]}` (offsets in the snippet, in Unicode scalar
/// values); `None` if nothing matches.
pub fn highlight(text: &str, words: &[String]) -> Option<Json> {
    let chars: Vec<char> = text.chars().collect();
    let mut marks: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    // Past the end of the window the first match opens, nothing more is shown.
    while i < chars.len()
        && marks
            .first()
            .is_none_or(|(first, _)| i < first + SNIPPET_CHARS)
    {
        if !is_word_char(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_word_char(chars[i]) {
            i += 1;
        }
        // Cheap test first: a folded word starts with the folded form of its first
        // letter, so most words are ruled out without folding them.
        let initial = fold_for_search(&chars[start].to_string()).to_lowercase();
        if !words
            .iter()
            .any(|w| w.starts_with(initial.as_str()) || initial.is_empty())
        {
            continue;
        }
        let word: String = chars[start..i].iter().collect();
        let folded = fold_for_search(&word).to_lowercase();
        let last = words.len() - 1;
        if words
            .iter()
            .enumerate()
            .any(|(n, w)| folded == *w || (n == last && folded.starts_with(w.as_str())))
        {
            marks.push((start, i));
        }
    }
    let first = marks.first()?.0;
    // A window from a little before the first match (or as much before it as keeps the
    // window full), cut at spaces.
    let mut from = first
        .saturating_sub(CONTEXT_BEFORE)
        .min(chars.len().saturating_sub(SNIPPET_CHARS));
    while from > 0 && from < first && !chars[from - 1].is_whitespace() {
        from += 1;
    }
    let mut to = (from + SNIPPET_CHARS).min(chars.len());
    while to < chars.len() && to > first && !chars[to].is_whitespace() {
        to -= 1;
    }
    let lead = if from > 0 { "…" } else { "" };
    let tail = if to < chars.len() { "…" } else { "" };
    let shift = lead.chars().count();
    let body: String = chars[from..to].iter().collect();
    let marks: Vec<Json> = marks
        .into_iter()
        .filter(|(s, e)| *s >= from && *e <= to)
        .map(|(s, e)| json!([s - from + shift, e - from + shift]))
        .collect();
    Some(json!({
        "text": format!("{lead}{}{tail}", body.trim_end_matches('\n')),
        "marks": marks,
    }))
}

/// Letters and digits, and the combining marks of decomposed text, make up words.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || unicode_normalization::char::is_combining_mark(c)
}

/// What a search result shows: `{"rank", "snippets": [{"field", "text", "marks"} …]}`,
/// one snippet per matching field (subject, number, notation, issuer, body) and per
/// matching annotation (`"field": "annotation"`, with its `"annotation"` id).
pub fn result_json(hit: &Hit, words: &[String]) -> Json {
    let mut snippets = Vec::new();
    for field in ["subject", "number", "notation", "issuer", "type", "body"] {
        if let Some(mut s) = hit.document[field]
            .as_str()
            .and_then(|t| highlight(t, words))
        {
            s["field"] = json!(field);
            snippets.push(s);
        }
    }
    for note in &hit.notes {
        let mut texts = vec![note["text"].as_str().unwrap_or_default().to_string()];
        for reply in note["replies"].as_array().into_iter().flatten() {
            texts.push(reply["text"].as_str().unwrap_or_default().to_string());
        }
        for text in texts {
            if let Some(mut s) = highlight(&text, words) {
                s["field"] = json!("annotation");
                s["annotation"] = note["id"].clone();
                snippets.push(s);
                break;
            }
        }
    }
    json!({ "rank": hit.rank, "snippets": snippets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(s: &Json) -> Vec<String> {
        let chars: Vec<char> = s["text"].as_str().unwrap().chars().collect();
        s["marks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let (a, b) = (
                    m[0].as_u64().unwrap() as usize,
                    m[1].as_u64().unwrap() as usize,
                );
                chars[a..b].iter().collect()
            })
            .collect()
    }

    #[test]
    fn words_are_marked_in_their_own_spelling() {
        let words = query_words("quyet dinh");
        let s = highlight("Quyết định về việc thành lập", &words).unwrap();
        assert_eq!(s["text"], "Quyết định về việc thành lập");
        assert_eq!(marked(&s), ["Quyết", "định"]);
        // Decomposed text keeps its form; `d` finds `đ` and `đ` finds `d`.
        let nfd = "Quye\u{302}\u{301}t đi\u{323}nh";
        assert_eq!(
            marked(&highlight(nfd, &words).unwrap()),
            ["Quye\u{302}\u{301}t", "đi\u{323}nh"]
        );
        assert_eq!(
            marked(&highlight("Đê điều", &query_words("de")).unwrap()),
            ["Đê"]
        );
        assert_eq!(
            marked(&highlight("duyệt", &query_words("đ")).unwrap()),
            ["duyệt"]
        );
        assert!(highlight("Nghị quyết", &query_words("dinh")).is_none());
    }

    #[test]
    fn a_long_text_is_cut_around_the_first_match() {
        let text = format!(
            "{} hồ chứa nước {}",
            "lời mở đầu ".repeat(40),
            "kết luận ".repeat(40)
        );
        let s = highlight(&text, &query_words("ho chua")).unwrap();
        let t = s["text"].as_str().unwrap();
        assert!(t.starts_with('…') && t.ends_with('…'), "{t}");
        assert!(t.chars().count() <= SNIPPET_CHARS + 2);
        assert_eq!(marked(&s), ["hồ", "chứa"]);
    }
}
