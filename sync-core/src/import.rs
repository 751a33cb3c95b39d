//! Import of official documents from Markdown or plain text (`cabinet-node import FILE…`).
//!
//! This module owns the step from one document's text to its header fields and body. The
//! fields are the ones Decree 30/2020/NĐ-CP (công tác văn thư) prescribes for the layout of
//! an administrative document in its Appendix I: the issuing organisation, the national motto
//! (recognised so it can be skipped), the number and notation ("Số: 05/QĐ-UBND"), the place and
//! date ("Hà Nội, ngày 16 tháng 6 năm 2025"), the type name ("NGHỊ QUYẾT") with its subject
//! (trích yếu), or the "V/v" subject of a letter (công văn).
//!
//! Reading files, decoding bytes and storing the result belong to the caller. The input is
//! expected to be either typed plain text or Markdown converted from PDF by pandoc, so the
//! scanner tolerates that conversion's noise instead of asking anyone to clean the files:
//! two-column header tables (dash-bordered and grid tables), `**bold**`/`*italic*` markers,
//! backslash escapes (`1\.`, `\-`), trailing-backslash line breaks, decomposed (NFD) Vietnamese
//! letters, and missing spaces such as `Số:357/TTr-CP` or `ngày 09tháng 5`.
//!
//! Everything here is hand-written scanning over `char`s: no regular expressions, and no
//! indexing that can panic on unexpected input.

use std::borrow::Cow;
use std::sync::OnceLock;

/// Header fields found in an imported text (all optional except body).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportedDocument {
    /// Tên loại văn bản in normal case as Appendix III spells it, e.g. "Nghị quyết";
    /// "Công văn" for a letter recognised by its "V/v" subject line.
    pub doc_type: Option<String>,
    /// Số: the digits as written, zero padding kept (Appendix I pads numbers below 10: "05").
    pub number: Option<String>,
    /// Ký hiệu: everything after the first "/" of the number line, e.g. "NQ-UBTVQH15". A legal
    /// document numbered "12/2025/NĐ-CP" keeps its year here ("2025/NĐ-CP") so nothing is lost.
    pub notation: Option<String>,
    /// Issuing organisation from the top-left header block: its lines joined with single
    /// spaces, decorative rules dropped, and otherwise exactly as written (capitals kept, both
    /// "ỦY" and "UỶ" spellings kept as they are), e.g. "ỦY BAN THƯỜNG VỤ QUỐC HỘI". Turning
    /// capitals into "Ủy ban Thường vụ Quốc hội" would need a dictionary of proper names, so it
    /// is not attempted. `None` when no such block is found or it has more than four lines.
    pub issuer: Option<String>,
    /// Địa danh, e.g. "Hà Nội".
    pub place: Option<String>,
    /// ISO 8601 date ("2025-06-16") from "ngày 16 tháng 6 năm 2025"; `None` when the date
    /// line is missing or names an impossible day.
    pub issued_date: Option<String>,
    /// Trích yếu in sentence case: first letter capital. A subject written in capitals is
    /// lower-cased, and the names of administrative units in it ("tỉnh An Giang") get their
    /// capitals back when the body spells the same unit with capitals. For a Công văn this is
    /// the text after "V/v".
    pub subject: Option<String>,
    /// The rest of the text after the header block: Markdown emphasis and pandoc escapes
    /// removed, table borders dropped, table cells read column by column, wrapped lines joined,
    /// hard line breaks kept as `\n`, paragraphs separated by one blank line, decomposed
    /// Vietnamese letters composed. Every word of the source after the header is kept.
    /// Typed plain text without blank lines is read as one paragraph per line.
    pub body: String,
}

/// Why a text could not be imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportError {
    /// e.g. empty file, binary content (NUL bytes, or not UTF-8 is handled by the caller), or
    /// nothing that looks like an official document
    #[error("not an official document: {reason}")]
    NotADocument {
        /// What was wrong with the text, for the operator.
        reason: String,
    },
}

/// Document types and their abbreviations, Decree 30/2020/NĐ-CP Appendix III. A công văn has
/// no type name in its header and no abbreviation.
const DOCUMENT_TYPES: &[(&str, Option<&str>)] = &[
    ("Nghị quyết", Some("NQ")),
    ("Quyết định", Some("QĐ")),
    ("Chỉ thị", Some("CT")),
    ("Quy chế", Some("QC")),
    ("Quy định", Some("QyĐ")),
    ("Thông cáo", Some("TC")),
    ("Thông báo", Some("TB")),
    ("Hướng dẫn", Some("HD")),
    ("Chương trình", Some("CTr")),
    ("Kế hoạch", Some("KH")),
    ("Phương án", Some("PA")),
    ("Đề án", Some("ĐA")),
    ("Dự án", Some("DA")),
    ("Báo cáo", Some("BC")),
    ("Biên bản", Some("BB")),
    ("Tờ trình", Some("TTr")),
    ("Hợp đồng", Some("HĐ")),
    ("Công điện", Some("CĐ")),
    ("Bản ghi nhớ", Some("GN")),
    ("Bản thỏa thuận", Some("TTh")),
    ("Giấy ủy quyền", Some("GUQ")),
    ("Giấy mời", Some("GM")),
    ("Giấy giới thiệu", Some("GGT")),
    ("Giấy nghỉ phép", Some("NP")),
    ("Phiếu gửi", Some("PG")),
    ("Phiếu chuyển", Some("PC")),
    ("Phiếu báo", Some("PB")),
    ("Công văn", None),
];

/// The type given to a letter recognised by its "V/v" line (Appendix I: a công văn carries
/// its subject after "V/v" instead of a type name).
const CONG_VAN: &str = "Công văn";

/// How many non-empty header cells are read before giving up on finding the number line, the
/// type name or "V/v". The real header is about ten cells; the margin covers long issuer
/// blocks, while a "Số: …" far down in a letter is never mistaken for the header.
const MAX_HEADER_CELLS: usize = 40;
/// Longest subject accepted, in lines.
const MAX_SUBJECT_LINES: usize = 6;
/// How many cells after the subject may still hold header parts (motto, place and date),
/// as in a công văn whose date sits below or beside its "V/v" line.
const MAX_TRAILING_HEADER_CELLS: usize = 8;
/// More lines than this left of the motto are not an issuer block.
const MAX_ISSUER_LINES: usize = 4;
/// A dash-bordered table longer than this is not taken for a table.
const MAX_TABLE_LINES: usize = 200;

/// The abbreviation for a document type (Decree 30 Appendix III), case-insensitive on the type name: "Nghị quyết" -> Some("NQ"), "Quyết định" -> "QĐ", "Công văn" -> None, unknown -> None.
///
/// Both tone placements are accepted ("Bản thỏa thuận"/"Bản thoả thuận", "Giấy ủy
/// quyền"/"Giấy uỷ quyền"), and decomposed (NFD) input is composed first.
pub fn type_abbreviation(doc_type: &str) -> Option<&'static str> {
    type_index(&match_key(doc_type)).and_then(|i| DOCUMENT_TYPES.get(i).and_then(|t| t.1))
}

/// Parses one document's text. Returns NotADocument when the text has neither a number/notation line ("Số: …/…") nor a recognised document type heading nor a "V/v" subject, or is empty/whitespace, or contains NUL/control characters other than \n \r \t.
///
/// Only the header counts: the number line must come before the type name or "V/v" line and
/// within the first few dozen cells, so the many "số 203/2025/QH15" cited in a body are never
/// taken for the document's own number.
pub fn parse_document(text: &str) -> Result<ImportedDocument, ImportError> {
    check_text(text)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = compose_vietnamese(text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.split('\n').collect();

    let markup = has_pandoc_markup(&text);
    // Pandoc wraps paragraphs and separates them with blank lines; typed plain text often
    // has one paragraph per line instead, and joining those would merge paragraphs. Text
    // with a blank line for every few lines is taken as wrapped.
    let inner = text.trim();
    let blank = inner.lines().filter(|l| l.trim().is_empty()).count();
    let non_blank = inner.lines().count() - blank;
    let wrapped = markup || blank * 4 >= non_blank;

    let segs = segment(&lines);
    let cells = header_cells(&segs, markup);
    let header = scan_header(&cells, wrapped);

    if header.number.is_none() && header.doc_type.is_none() {
        return Err(not_a_document(
            "no number line (\"Số: …/…\"), document type name or \"V/v\" subject in the header",
        ));
    }

    let body_start = header.last_seg.map_or(0, |s| s + 1);
    let body = render_body(segs.get(body_start..).unwrap_or(&[]), markup, wrapped);
    let issuer = (1..=MAX_ISSUER_LINES)
        .contains(&header.issuer.len())
        .then(|| header.issuer.join(" "));
    let subject = header.subject.map(|s| format_subject(&s, &body));

    let doc = ImportedDocument {
        doc_type: header.doc_type.map(str::to_string),
        number: header.number,
        notation: header.notation,
        issuer,
        place: header.place,
        issued_date: header.issued_date,
        subject,
        body,
    };
    tracing::debug!(
        doc_type = ?doc.doc_type,
        number = ?doc.number,
        notation = ?doc.notation,
        issued_date = ?doc.issued_date,
        body_chars = doc.body.chars().count(),
        "parsed document header"
    );
    Ok(doc)
}

/// Reads a table sent as a document in its own right (CSV, such as the list of the 34
/// provinces that accompanies dispatch 915/CTK-CSCL). A table has no header block, so:
/// - number and notation come from the file name when it follows the `NUMBER_NOTATION`
///   convention of the documents it travels with (`915_CTK-CSCL` → 915, `CTK-CSCL`);
/// - the subject is the widest heading of its first row, which names what the table lists
///   (`Tên 34 tỉnh sau sáp nhập`);
/// - the body is the table as received, every cell kept.
///
/// Text that is not a table with a heading row and at least one data row, every row with
/// the same number (at least two) of columns, is not a document.
pub fn parse_table(text: &str, file_stem: &str) -> Result<ImportedDocument, ImportError> {
    check_text(text)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = compose_vietnamese(text).replace("\r\n", "\n");
    // Spreadsheets saved with a Vietnamese locale separate cells with `;` (the comma is
    // the decimal mark there); tabs come from copying a table. The heading row decides.
    let first = text.lines().next().unwrap_or("");
    let delimiter = [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| first.bytes().filter(|b| b == d).count())
        .filter(|d| first.as_bytes().contains(d))
        .unwrap_or(b',');
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| not_a_document(format!("not a table: {e}")))?;
        rows.push(row);
    }
    let Some(heading) = rows.first() else {
        return Err(not_a_document("the table has no rows"));
    };
    if heading.len() < 2 || rows.len() < 2 {
        return Err(not_a_document(
            "a table needs a heading row, at least one data row and two columns",
        ));
    }
    let subject = heading
        .iter()
        .map(str::trim)
        .max_by_key(|cell| cell.chars().count())
        .filter(|cell| !cell.is_empty())
        .map(str::to_string);
    let (number, notation) = match file_stem.split_once('_') {
        Some((number, notation))
            if !number.is_empty()
                && number.chars().all(|c| c.is_ascii_digit())
                && !notation.is_empty()
                && notation.chars().all(|c| c.is_alphanumeric() || c == '-') =>
        {
            (Some(number.to_string()), Some(notation.to_string()))
        }
        _ => (None, None),
    };
    Ok(ImportedDocument {
        doc_type: None,
        number,
        notation,
        issuer: None,
        place: None,
        issued_date: None,
        subject,
        body: text.trim_end().to_string(),
    })
}

fn not_a_document(reason: impl Into<String>) -> ImportError {
    ImportError::NotADocument {
        reason: reason.into(),
    }
}

/// Rejects empty text and binary content before any scanning.
fn check_text(text: &str) -> Result<(), ImportError> {
    if text.trim().is_empty() {
        return Err(not_a_document("the text is empty"));
    }
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(not_a_document(format!(
            "control character U+{:04X} found; binary content?",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Whether the text carries pandoc's Markdown noise, so that `*` and `\` are markup rather
/// than content.
fn has_pandoc_markup(text: &str) -> bool {
    text.contains("**")
        || text.contains("\\.")
        || text.contains("\\-")
        || text.lines().any(|l| l.trim_end().ends_with('\\'))
}

// ---------------------------------------------------------------------------------------
// Vietnamese letters: composition of decomposed input and tone-placement folding.
// ---------------------------------------------------------------------------------------

/// The twelve Vietnamese vowel bases, then the same bases under each tone mark in the order
/// of [`TONE_MARKS`]; lower case first, upper case second.
const VOWELS: [[&str; 6]; 2] = [
    [
        "aăâeêioôơuưy",
        "àằầèềìòồờùừỳ",
        "áắấéếíóốớúứý",
        "ảẳẩẻểỉỏổởủửỷ",
        "ãẵẫẽễĩõỗỡũữỹ",
        "ạặậẹệịọộợụựỵ",
    ],
    [
        "AĂÂEÊIOÔƠUƯY",
        "ÀẰẦÈỀÌÒỒỜÙỪỲ",
        "ÁẮẤÉẾÍÓỐỚÚỨÝ",
        "ẢẲẨẺỂỈỎỔỞỦỬỶ",
        "ÃẴẪẼỄĨÕỖỠŨỮỸ",
        "ẠẶẬẸỆỊỌỘỢỤỰỴ",
    ],
];

/// Combining grave, acute, hook above, tilde and dot below.
const TONE_MARKS: [char; 5] = ['\u{300}', '\u{301}', '\u{309}', '\u{303}', '\u{323}'];

/// A Vietnamese vowel split into case, base (index into a row of [`VOWELS`]) and tone (0 for
/// none, else 1 + index into [`TONE_MARKS`]).
#[derive(Clone, Copy)]
struct Vowel {
    upper: bool,
    base: usize,
    tone: usize,
}

fn vowel_parts(c: char) -> Option<Vowel> {
    VOWELS.iter().enumerate().find_map(|(case, rows)| {
        rows.iter().enumerate().find_map(|(tone, row)| {
            row.chars().position(|v| v == c).map(|base| Vowel {
                upper: case == 1,
                base,
                tone,
            })
        })
    })
}

fn vowel_char(v: Vowel) -> Option<char> {
    VOWELS
        .get(usize::from(v.upper))
        .and_then(|rows| rows.get(v.tone))
        .and_then(|row| row.chars().nth(v.base))
}

/// `c` with one combining mark applied, when the result is a Vietnamese letter.
fn with_mark(c: char, mark: char) -> Option<char> {
    let mut v = vowel_parts(c)?;
    if let Some(t) = TONE_MARKS.iter().position(|&m| m == mark) {
        if v.tone != 0 {
            return None;
        }
        v.tone = t + 1;
    } else {
        v.base = match (v.base, mark) {
            (0, '\u{306}') => 1,
            (0, '\u{302}') => 2,
            (3, '\u{302}') => 4,
            (6, '\u{302}') => 7,
            (6, '\u{31b}') => 8,
            (9, '\u{31b}') => 10,
            _ => return None,
        };
    }
    vowel_char(v)
}

/// Composes decomposed Vietnamese letters ("a" + U+0301 → "á"). PDF converters emit NFD for
/// whole passages, and a decomposed heading would not match its type name; composition is
/// canonically equivalent, so nothing of the text changes in meaning. Marks that do not form
/// a Vietnamese letter are left as they are.
fn compose_vietnamese(text: &str) -> Cow<'_, str> {
    let is_mark = |c: char| ('\u{300}'..='\u{36f}').contains(&c);
    if !text.chars().any(is_mark) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last: Option<char> = None;
    for c in text.chars() {
        if is_mark(c)
            && let Some(prev) = last
            && let Some(composed) = with_mark(prev, c)
        {
            out.pop();
            out.push(composed);
            last = Some(composed);
            continue;
        }
        out.push(c);
        last = Some(c);
    }
    Cow::Owned(out)
}

/// Moves the tone of "oa", "oe" and "uy" to the first vowel ("hoà" → "hòa", "uỷ" → "ủy").
/// Both placements are in everyday use; folding them makes "Cộng hoà"/"Cộng hòa" and
/// "Uỷ"/"Ủy" compare equal. Used for matching only, never for output.
fn fold_tone_placement(lower: &str) -> String {
    let chars: Vec<char> = lower.chars().collect();
    let mut out = String::with_capacity(lower.len());
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if let Some(&next) = chars.get(i + 1)
            && let Some(v) = vowel_parts(next)
            && v.tone != 0
            && !v.upper
        {
            let first_base = match (c, v.base) {
                ('o', 0 | 3) => Some(6),
                ('u', 11) => Some(9),
                _ => None,
            };
            if let Some(base) = first_base
                && let Some(first) = vowel_char(Vowel {
                    upper: false,
                    base,
                    tone: v.tone,
                })
                && let Some(second) = vowel_char(Vowel { tone: 0, ..v })
            {
                out.push(first);
                out.push(second);
                i += 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The comparison key of a phrase: composed, lower case, tone placement folded, whitespace
/// collapsed.
fn match_key(text: &str) -> String {
    let lower = collapse_ws(&compose_vietnamese(text)).to_lowercase();
    fold_tone_placement(&lower)
}

fn type_index(key: &str) -> Option<usize> {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| DOCUMENT_TYPES.iter().map(|t| match_key(t.0)).collect())
        .iter()
        .position(|k| k == key)
}

/// The type whose name is the whole cell, e.g. "NGHỊ QUYẾT" (Appendix I: the type name stands
/// on its own line, in capitals).
fn match_doc_type(text: &str) -> Option<&'static str> {
    type_index(&match_key(text)).and_then(|i| DOCUMENT_TYPES.get(i).map(|t| t.0))
}

/// The national title and motto (Quốc hiệu và Tiêu ngữ), or a line of it.
fn is_motto(text: &str) -> bool {
    let key = match_key(text);
    [
        "cộng hòa xã hội",
        "chủ nghĩa việt nam",
        "độc lập",
        "hạnh phúc",
    ]
    .iter()
    .any(|m| key.contains(m))
}

// ---------------------------------------------------------------------------------------
// Small text helpers.
// ---------------------------------------------------------------------------------------

fn collapse_ws(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` without a leading `prefix` (given in lower case), compared case-insensitively.
fn strip_prefix_ci<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let mut rest = text;
    for p in prefix.chars() {
        let mut it = rest.chars();
        let c = it.next()?;
        let mut lower = c.to_lowercase();
        if lower.next() != Some(p) || lower.next().is_some() {
            return None;
        }
        rest = it.as_str();
    }
    Some(rest)
}

/// Byte range of the first whole-word occurrence of `word` (lower case) in `text`.
fn find_word_ci(text: &str, word: &str) -> Option<(usize, usize)> {
    let mut prev: Option<char> = None;
    for (i, c) in text.char_indices() {
        if !prev.is_some_and(char::is_alphanumeric)
            && let Some(rest) = text.get(i..).and_then(|t| strip_prefix_ci(t, word))
        {
            return Some((i, text.len() - rest.len()));
        }
        prev = Some(c);
    }
    None
}

/// Takes 1..=`max_len` ASCII digits after optional whitespace.
fn take_digits(text: &str, max_len: usize) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 || len > max_len {
        return None;
    }
    Some(text.split_at(len))
}

/// Rules and borders: the short line Appendix I draws under the issuer and the motto (here
/// `-------` once unescaped), table borders, thematic breaks.
fn is_decorative(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| {
            matches!(
                c,
                '-' | '–' | '—' | '_' | '=' | '+' | '|' | ':' | '~' | '.' | '*'
            ) || c.is_whitespace()
        })
}

/// Lines that open the body proper: legal bases, the addressee of a letter, an article.
fn is_body_start(text: &str) -> bool {
    let lower = text.to_lowercase();
    ["căn cứ", "kính gửi", "xét đề nghị"]
        .iter()
        .any(|p| lower.starts_with(p))
        || lower
            .strip_prefix("điều ")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

fn capitalise_first(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut done = false;
    for c in text.chars() {
        if !done && c.is_alphanumeric() {
            done = true;
            if c.is_lowercase() {
                out.extend(c.to_uppercase());
                continue;
            }
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Cleaning one line or cell of Markdown.
// ---------------------------------------------------------------------------------------

/// The text of one line or cell with emphasis markers, pandoc escapes and extra whitespace
/// removed, and whether it ended in a hard line break (pandoc writes a trailing `\`,
/// sometimes before the closing emphasis: `CHỦ TỊCH\**`).
fn clean(raw: &str, markup: bool) -> (String, bool) {
    if !markup {
        return (collapse_ws(raw), false);
    }
    let raw = strip_atx_heading(raw);
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len());
    let mut hard_break = false;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '\\' => {
                let rest = chars.get(i + 1..).unwrap_or(&[]);
                if rest.iter().all(|&r| r == '*' || r.is_whitespace()) {
                    hard_break = true;
                    break;
                }
                let Some(&next) = rest.first() else {
                    break;
                };
                if next.is_ascii_punctuation() {
                    // `\*` next to other stars is pandoc closing emphasis after a break, not
                    // a literal asterisk.
                    let star_run = next == '*'
                        && (rest.get(1) == Some(&'*')
                            || i.checked_sub(1).and_then(|p| chars.get(p)) == Some(&'*'));
                    if !star_run {
                        out.push(next);
                    }
                    i += 2;
                } else {
                    out.push('\\');
                    i += 1;
                }
            }
            '*' => {
                let run = chars
                    .get(i..)
                    .unwrap_or(&[])
                    .iter()
                    .take_while(|&&s| s == '*');
                let after = i + run.count();
                // PDF conversion loses the space before bold text ("là**xã Thất Khê**");
                // emphasis between two letters marks a word boundary, so keep one.
                if out.chars().last().is_some_and(char::is_alphanumeric)
                    && chars.get(after).is_some_and(|c| c.is_alphanumeric())
                {
                    out.push(' ');
                }
                i = after;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    (collapse_ws(&out), hard_break)
}

fn strip_atx_heading(raw: &str) -> &str {
    let t = raw.trim_start();
    let rest = t.trim_start_matches('#');
    let level = t.len() - rest.len();
    if (1..=6).contains(&level) && (rest.is_empty() || rest.starts_with(' ')) {
        rest
    } else {
        raw
    }
}

// ---------------------------------------------------------------------------------------
// Segmentation: lines in reading order, with tables read cell by cell.
// ---------------------------------------------------------------------------------------

/// One unit of text in reading order: a source line, a slice of a table cell, or a break
/// (blank line, or the edge of a table cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'a> {
    Break,
    Line(&'a str),
}

/// Splits the text into segments. Tables are read row by row and, within a row, column by
/// column: the header's issuer column then its motto column, the signature table's "Nơi
/// nhận" column then its signature column.
fn segment<'a>(lines: &[&'a str]) -> Vec<Seg<'a>> {
    let mut segs = Vec::new();
    let mut i = 0;
    while let Some(&line) = lines.get(i) {
        if is_grid_border(line) {
            i = grid_table(lines, i, &mut segs);
        } else if let Some(end) = dash_table_end(lines, i) {
            let content = lines.get(i + 1..end).unwrap_or(&[]);
            dash_table(content, &dash_runs(line).unwrap_or_default(), &mut segs);
            i = end + 1;
        } else if line.trim().is_empty() {
            segs.push(Seg::Break);
            i += 1;
        } else if line.trim_start().starts_with('|') {
            // A pipe-table row outside a grid table: one paragraph of cells.
            segs.push(Seg::Break);
            segs.extend(split_pipes(line.trim()).into_iter().map(Seg::Line));
            segs.push(Seg::Break);
            i += 1;
        } else {
            segs.push(Seg::Line(line));
            i += 1;
        }
    }
    segs
}

/// `+-----+:----:+`: the border of a pandoc grid table.
fn is_grid_border(line: &str) -> bool {
    let t = line.trim();
    t.len() >= 3
        && t.starts_with('+')
        && t.ends_with('+')
        && t.contains(['-', '='])
        && t.chars().all(|c| matches!(c, '+' | '-' | '=' | ':'))
}

/// Cells of a `| a | b |` row, split on unescaped pipes.
fn split_pipes(row: &str) -> Vec<&str> {
    let mut cells = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in row.char_indices() {
        if c == '|' && !escaped {
            cells.push(row.get(start..i).unwrap_or(""));
            start = i + 1;
        }
        escaped = c == '\\' && !escaped;
    }
    cells.push(row.get(start..).unwrap_or(""));
    // The pieces before the first and after the last pipe are outside the table.
    if row.starts_with('|') && !cells.is_empty() {
        cells.remove(0);
    }
    if row.ends_with('|') && !row.ends_with("\\|") {
        cells.pop();
    }
    cells
}

/// Reads a grid table starting at its top border; returns the index of the first line after.
fn grid_table<'a>(lines: &[&'a str], start: usize, segs: &mut Vec<Seg<'a>>) -> usize {
    let mut columns: Vec<Vec<&'a str>> = Vec::new();
    let mut i = start + 1;
    while let Some(&line) = lines.get(i) {
        let t = line.trim();
        if is_grid_border(t) {
            flush_row(&mut columns, segs);
        } else if t.starts_with('|') {
            for (k, cell) in split_pipes(t).into_iter().enumerate() {
                if columns.len() <= k {
                    columns.resize_with(k + 1, Vec::new);
                }
                if let Some(col) = columns.get_mut(k) {
                    col.push(cell);
                }
            }
        } else {
            break;
        }
        i += 1;
    }
    flush_row(&mut columns, segs);
    segs.push(Seg::Break);
    i
}

/// Emits one table row column by column, each column as its own paragraph(s).
fn flush_row<'a>(columns: &mut [Vec<&'a str>], segs: &mut Vec<Seg<'a>>) {
    for col in columns.iter_mut() {
        if col.iter().any(|c| !c.trim().is_empty()) {
            segs.push(Seg::Break);
            segs.extend(col.iter().map(|c| {
                if c.trim().is_empty() {
                    Seg::Break
                } else {
                    Seg::Line(c.trim())
                }
            }));
        }
        col.clear();
    }
}

/// Start (in chars) of each run of dashes in a border line like
/// `  -------- ------------`; `None` unless the line holds only dashes and spaces in runs of
/// at least three.
fn dash_runs(line: &str) -> Option<Vec<usize>> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (idx, c) in line.trim_end().chars().enumerate() {
        match c {
            '-' => match runs.last_mut() {
                Some((s, len)) if *s + *len == idx => *len += 1,
                _ => runs.push((idx, 1)),
            },
            ' ' => {}
            _ => return None,
        }
    }
    (!runs.is_empty() && runs.iter().all(|&(_, len)| len >= 3))
        .then(|| runs.into_iter().map(|(s, _)| s).collect())
}

/// The index of the closing border when `lines[start]` opens a pandoc multiline or
/// headerless simple table of two or more columns (a single column is just text). Every
/// content line must leave the gap before each column blank, as pandoc does; prose caught
/// between two unrelated rules would not, so it is not sliced into columns.
fn dash_table_end(lines: &[&str], start: usize) -> Option<usize> {
    let runs = dash_runs(lines.get(start)?)?;
    if runs.len() < 2 {
        return None;
    }
    let limit = lines.len().min(start + 1 + MAX_TABLE_LINES);
    let end = (start + 1..limit).find(|&j| {
        lines
            .get(j)
            .and_then(|l| dash_runs(l))
            .is_some_and(|r| r.len() >= 2)
    })?;
    let fits = lines.get(start + 1..end)?.iter().all(|line| {
        runs.iter().skip(1).all(|&b| {
            line.chars()
                .nth(b.saturating_sub(1))
                .is_none_or(char::is_whitespace)
        })
    });
    fits.then_some(end)
}

/// Reads the rows of a dash-bordered table (rows end at blank lines) column by column.
fn dash_table<'a>(content: &[&'a str], runs: &[usize], segs: &mut Vec<Seg<'a>>) {
    let mut columns: Vec<Vec<&'a str>> = vec![Vec::new(); runs.len().max(1)];
    for &line in content {
        if line.trim().is_empty() {
            flush_row(&mut columns, segs);
            continue;
        }
        let offsets: Vec<usize> = line.char_indices().map(|(b, _)| b).collect();
        let byte_at = |ci: usize| offsets.get(ci).copied().unwrap_or(line.len());
        for (k, col) in columns.iter_mut().enumerate() {
            let from = if k == 0 {
                0
            } else {
                runs.get(k).map_or(line.len(), |&c| byte_at(c))
            };
            let to = runs.get(k + 1).map_or(line.len(), |&c| byte_at(c));
            col.push(line.get(from..to.max(from)).unwrap_or(""));
        }
    }
    flush_row(&mut columns, segs);
    segs.push(Seg::Break);
}

// ---------------------------------------------------------------------------------------
// Header scanning.
// ---------------------------------------------------------------------------------------

/// One cleaned header cell; `seg` is the segment it came from.
#[derive(Debug, Clone)]
struct Cell {
    seg: usize,
    text: String,
    bold: bool,
}

/// Header cells in reading order (`None` for a break). A line is split into cells at pipes
/// and at wide gaps, so a plain-text header typed in two columns reads like a table.
fn header_cells(segs: &[Seg<'_>], markup: bool) -> Vec<Option<Cell>> {
    let mut cells = Vec::new();
    // Far more than the header needs, so that scanning stays cheap on long bodies.
    for (seg, item) in segs.iter().enumerate().take(MAX_HEADER_CELLS * 8) {
        let Seg::Line(raw) = item else {
            cells.push(None);
            continue;
        };
        for piece in split_wide(raw) {
            let (text, _) = clean(piece, markup);
            if text.is_empty() {
                cells.push(None);
            } else {
                let bold = markup && piece.starts_with("**") && piece.ends_with("**");
                cells.push(Some(Cell { seg, text, bold }));
            }
        }
    }
    cells
}

/// Splits a line at runs of three or more spaces, at tabs and at unescaped pipes.
fn split_wide(raw: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut run: Option<(usize, usize, bool)> = None; // (byte start, length, has tab)
    let mut prev = '\0';
    for (i, c) in raw.char_indices() {
        if c.is_whitespace() {
            let (s, len, tab) = run.unwrap_or((i, 0, false));
            run = Some((s, len + 1, tab || c == '\t'));
        } else {
            if let Some((s, len, tab)) = run.take()
                && (len >= 3 || tab)
            {
                pieces.push(raw.get(start..s).unwrap_or(""));
                start = i;
            }
            if c == '|' && prev != '\\' {
                pieces.push(raw.get(start..i).unwrap_or(""));
                start = i + 1;
            }
        }
        prev = c;
    }
    pieces.push(raw.get(start..).unwrap_or(""));
    pieces
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// What the header scan found.
#[derive(Debug, Default)]
struct Header {
    issuer: Vec<String>,
    number: Option<String>,
    notation: Option<String>,
    place: Option<String>,
    issued_date: Option<String>,
    date_line_seen: bool,
    doc_type: Option<&'static str>,
    subject: Option<String>,
    /// The last segment that belongs to the header; the body starts after it.
    last_seg: Option<usize>,
}

impl Header {
    fn consume(&mut self, seg: usize) {
        self.last_seg = Some(self.last_seg.map_or(seg, |s| s.max(seg)));
    }

    /// Takes the place/date line once; an impossible date still marks the line as seen.
    fn take_date(&mut self, text: &str, seg: usize) -> bool {
        if self.date_line_seen {
            return false;
        }
        let Some(line) = parse_place_date(text) else {
            return false;
        };
        self.place = line.place;
        self.issued_date = line.date;
        self.date_line_seen = true;
        self.consume(seg);
        true
    }
}

/// Reads the header in the order Appendix I lays it out: issuer and motto, number and
/// place/date, then the type name with its subject (or a công văn's "V/v" subject).
fn scan_header(cells: &[Option<Cell>], wrapped: bool) -> Header {
    let mut h = Header::default();
    let mut seen = 0;
    let mut i = 0;
    while let Some(item) = cells.get(i) {
        i += 1;
        let Some(cell) = item else { continue };
        let text = cell.text.as_str();
        if is_decorative(text) {
            continue;
        }
        seen += 1;
        if seen > MAX_HEADER_CELLS || is_body_start(text) {
            break;
        }
        if h.number.is_none()
            && let Some(n) = parse_number(text)
        {
            h.number = Some(n.number);
            h.notation = Some(n.notation);
            h.consume(cell.seg);
            // A plain-text header may put the place and date on the number's line.
            h.take_date(n.rest, cell.seg);
            continue;
        }
        if let Some(doc_type) = match_doc_type(text) {
            h.doc_type = Some(doc_type);
            h.consume(cell.seg);
            let next = take_subject(cells, i, None, wrapped, &mut h);
            scan_after_subject(cells, next, &mut h);
            break;
        }
        if let Some(first) = strip_vv(text) {
            h.doc_type = Some(CONG_VAN);
            h.consume(cell.seg);
            let next = take_subject(
                cells,
                i,
                Some((first.to_string(), cell.bold)),
                wrapped,
                &mut h,
            );
            scan_after_subject(cells, next, &mut h);
            break;
        }
        if h.take_date(text, cell.seg) {
            continue;
        }
        if is_motto(text) {
            h.consume(cell.seg);
            continue;
        }
        // Whatever else stands above the number line is the issuing organisation (Appendix I
        // puts it top left, above "Số"); once the number is read, stray cells are skipped.
        if h.number.is_none() {
            h.issuer.push(cell.text.clone());
            h.consume(cell.seg);
        }
    }
    h
}

/// Whether a cell may belong to a subject rather than to another header part or the body.
fn could_be_subject(text: &str) -> bool {
    !is_body_start(text)
        && !is_motto(text)
        && parse_number(text).is_none()
        && parse_place_date(text).is_none()
        && match_doc_type(text).is_none()
        && strip_vv(text).is_none()
}

/// Leading words of the enacting-authority line that follows a subject written in capitals.
const AUTHORITY_STARTS: &[&str] = &[
    "chủ tịch",
    "ủy ban",
    "hội đồng",
    "bộ trưởng",
    "giám đốc",
    "thủ tướng",
    "chính phủ",
    "quốc hội",
    "thường trực",
    "ban chấp hành",
];

/// In plain text, which has no blank line after the subject, a subject line continues only
/// if its case follows on: a capitals subject goes on in capitals (but not into the
/// authority line), a sentence-case subject goes on with a lower-case word or a number.
fn continues_subject(parts: &[String], next: &str) -> bool {
    if parts.iter().any(|p| p.chars().any(char::is_lowercase)) {
        next.chars().next().is_some_and(|c| !c.is_uppercase())
    } else {
        let key = match_key(next);
        !next.chars().any(char::is_lowercase)
            && !AUTHORITY_STARTS.iter().any(|a| key.starts_with(a))
    }
}

/// Reads the subject starting at `cells[start]` (or continuing `first`, the text after
/// "V/v"); returns the index of the first cell after it.
fn take_subject(
    cells: &[Option<Cell>],
    start: usize,
    first: Option<(String, bool)>,
    wrapped: bool,
    h: &mut Header,
) -> usize {
    let mut parts: Vec<String> = Vec::new();
    let mut i = start;
    let bold = match first.filter(|(f, _)| !f.is_empty()) {
        Some((text, b)) => {
            parts.push(text);
            b
        }
        None => {
            while let Some(item) = cells.get(i) {
                match item {
                    None => i += 1,
                    Some(c) if is_decorative(&c.text) => i += 1,
                    Some(_) => break,
                }
            }
            let Some(Some(c)) = cells.get(i) else {
                return i;
            };
            if !could_be_subject(&c.text) {
                return i;
            }
            parts.push(c.text.clone());
            h.consume(c.seg);
            i += 1;
            c.bold
        }
    };
    while parts.len() < MAX_SUBJECT_LINES {
        // A break ends the subject: pandoc leaves a blank line after it.
        let Some(Some(c)) = cells.get(i) else { break };
        if is_decorative(&c.text) || c.bold != bold || !could_be_subject(&c.text) {
            break;
        }
        if !wrapped && !continues_subject(&parts, &c.text) {
            break;
        }
        parts.push(c.text.clone());
        h.consume(c.seg);
        i += 1;
    }
    if !parts.is_empty() {
        h.subject = Some(parts.join(" "));
    }
    i
}

/// After the subject, a motto or place/date cell can still follow (a công văn read line by
/// line, or a table read column by column); anything else is the body.
fn scan_after_subject(cells: &[Option<Cell>], start: usize, h: &mut Header) {
    let mut seen = 0;
    for item in cells.iter().skip(start) {
        let Some(c) = item else { continue };
        if is_decorative(&c.text) {
            continue;
        }
        seen += 1;
        if seen > MAX_TRAILING_HEADER_CELLS {
            break;
        }
        if is_motto(&c.text) {
            h.consume(c.seg);
        } else if !h.take_date(&c.text, c.seg) {
            break;
        }
    }
}

/// A parsed "Số: 1654/NQ-UBTVQH15" cell; `rest` is what followed the notation.
struct NumberLine<'t> {
    number: String,
    notation: String,
    rest: &'t str,
}

/// Reads "Số: 1654/NQ-UBTVQH15", also "Số:1654/…", "Số 05/…" and "SỐ: …". The word must
/// open the cell: Appendix I writes it at the start of the number line, while a body cites
/// other documents as "… số 203/2025/QH15" mid-sentence.
fn parse_number(cell: &str) -> Option<NumberLine<'_>> {
    let rest = strip_prefix_ci(cell, "số")?;
    let first = rest.chars().next()?;
    if !(first.is_whitespace() || first == ':' || first == '：' || first.is_ascii_digit()) {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix([':', '：']).unwrap_or(rest).trim_start();
    let (number, rest) = take_digits(rest, 10)?;
    let rest = rest.trim_start().strip_prefix('/')?.trim_start();
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '|' | '*' | ',' | ';'))
        .unwrap_or(rest.len());
    let (notation, after) = rest.split_at(end);
    let notation = notation.trim_end_matches(['.', ':', ')']);
    if !notation.chars().any(char::is_alphabetic) {
        return None;
    }
    Some(NumberLine {
        number: number.to_string(),
        notation: notation.to_string(),
        rest: after,
    })
}

/// "V/v chuẩn bị họp …" → "chuẩn bị họp …" (Appendix I: a công văn's subject follows "V/v").
fn strip_vv(cell: &str) -> Option<&str> {
    let rest = strip_prefix_ci(cell, "v/v")?;
    match rest.chars().next() {
        None => Some(""),
        Some(c) if c.is_whitespace() || c == ':' || c == '.' => {
            Some(rest.trim_start_matches([':', '.']).trim())
        }
        Some(_) => None,
    }
}

/// A place/date line; `date` is `None` when the date is impossible.
struct PlaceDate {
    place: Option<String>,
    date: Option<String>,
}

/// Reads "<place>, ngày DD tháng MM năm YYYY" (Appendix I), tolerating missing spaces
/// ("ngày 09tháng 5") and the short form "ngày 16/6/2025". The place is at most a few words
/// before "ngày", so a sentence that mentions a date is not a date line.
fn parse_place_date(cell: &str) -> Option<PlaceDate> {
    let (start, end) = find_word_ci(cell, "ngày")?;
    let place = cell.get(..start)?.trim().trim_end_matches(',').trim_end();
    if place.split_whitespace().count() > 8 {
        return None;
    }
    let (day, rest) = take_digits(cell.get(end..)?, 2)?;
    let (month, year) = if let Some(r) = rest.trim_start().strip_prefix(['/', '-', '.']) {
        let (month, r) = take_digits(r, 2)?;
        let r = r.trim_start().strip_prefix(['/', '-', '.'])?;
        (month, take_digits(r, 4)?.0)
    } else {
        let r = strip_prefix_ci(rest.trim_start(), "tháng")?;
        let (month, r) = take_digits(r, 2)?;
        let r = strip_prefix_ci(r.trim_start(), "năm")?;
        (month, take_digits(r, 4)?.0)
    };
    if year.len() != 4 {
        return None;
    }
    let place = place
        .chars()
        .any(char::is_alphabetic)
        .then(|| place.to_string());
    Some(PlaceDate {
        place,
        date: iso_date(year, month, day),
    })
}

fn iso_date(year: &str, month: &str, day: &str) -> Option<String> {
    let (y, m, d): (u32, u32, u32) = (year.parse().ok()?, month.parse().ok()?, day.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (y >= 1000 && (1..=days).contains(&d)).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

// ---------------------------------------------------------------------------------------
// Subject case.
// ---------------------------------------------------------------------------------------

/// Sentence case for a subject: Appendix I sets the trích yếu in lower case ("chữ in
/// thường"), so only its first letter and the proper names of Appendix II keep capitals.
fn format_subject(raw: &str, body: &str) -> String {
    let text = collapse_ws(raw);
    let has_lower = text.chars().any(char::is_lowercase);
    let has_upper = text.chars().any(char::is_uppercase);
    if has_upper && !has_lower {
        capitalise_first(&restore_unit_names(&text.to_lowercase(), body))
    } else {
        capitalise_first(&text)
    }
}

/// Administrative-unit words; Appendix II capitalises every syllable of the proper name that
/// follows them ("tỉnh An Giang", "thành phố Hà Nội"). Two-word units come first.
const UNIT_WORDS: &[&[&str]] = &[
    &["thành", "phố"],
    &["thị", "xã"],
    &["thị", "trấn"],
    &["đặc", "khu"],
    &["tỉnh"],
    &["huyện"],
    &["quận"],
    &["xã"],
    &["phường"],
];

/// A whitespace-separated word split into its letters/digits and the punctuation around.
struct Word<'t> {
    lead: &'t str,
    core: &'t str,
    trail: &'t str,
}

impl<'t> Word<'t> {
    fn new(raw: &'t str) -> Self {
        let not_alnum = |c: char| !c.is_alphanumeric();
        let start = raw.len() - raw.trim_start_matches(not_alnum).len();
        let end = raw.trim_end_matches(not_alnum).len().max(start);
        Word {
            lead: raw.get(..start).unwrap_or(""),
            core: raw.get(start..end).unwrap_or(""),
            trail: raw.get(end..).unwrap_or(""),
        }
    }
}

/// Gives the unit names in a lower-cased subject their capitals back, taking the spelling
/// from the body ("tỉnh an giang" → "tỉnh An Giang" when the body writes "tỉnh An Giang").
/// A word is restored only when the body has the same unit followed by the same word in
/// capitals, so nothing is guessed.
fn restore_unit_names(lower: &str, body: &str) -> String {
    let words: Vec<Word<'_>> = lower.split(' ').map(Word::new).collect();
    let body_words: Vec<Word<'_>> = body.split_whitespace().map(Word::new).collect();
    let mut forms: Vec<Option<&str>> = vec![None; words.len()];
    let mut i = 0;
    while i < words.len() {
        let unit = UNIT_WORDS.iter().find(|unit| {
            unit.iter().enumerate().all(|(k, u)| {
                words
                    .get(i + k)
                    .is_some_and(|w| w.core == *u && w.trail.is_empty())
            })
        });
        let Some(unit) = unit else {
            i += 1;
            continue;
        };
        let name_start = i + unit.len();
        let best = confirmed_name(words.get(name_start..).unwrap_or(&[]), unit, &body_words);
        let advance = best.len();
        for (k, form) in best.into_iter().enumerate() {
            if let Some(slot) = forms.get_mut(name_start + k) {
                *slot = Some(form);
            }
        }
        i = name_start + advance;
    }
    words
        .iter()
        .zip(forms)
        .map(|(w, form)| format!("{}{}{}", w.lead, form.unwrap_or(w.core), w.trail))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The longest body spelling of the name after `unit` that agrees with the subject's words.
fn confirmed_name<'b>(name: &[Word<'_>], unit: &[&str], body: &[Word<'b>]) -> Vec<&'b str> {
    let mut best: Vec<&'b str> = Vec::new();
    for p in 0..body.len() {
        let unit_matches = unit.iter().enumerate().all(|(k, u)| {
            body.get(p + k).is_some_and(|w| {
                w.trail.is_empty() && (k == 0 || w.lead.is_empty()) && w.core.to_lowercase() == *u
            })
        });
        if !unit_matches {
            continue;
        }
        let mut found: Vec<&'b str> = Vec::new();
        for (k, subject_word) in name.iter().enumerate() {
            let Some(w) = body.get(p + unit.len() + k) else {
                break;
            };
            // "An", not "AN": a body line in capitals says nothing about the name's case.
            let capitalised = w.core.chars().next().is_some_and(char::is_uppercase)
                && w.core.chars().skip(1).all(|c| !c.is_uppercase());
            if !w.lead.is_empty()
                || !capitalised
                || subject_word.core.is_empty()
                || w.core.to_lowercase() != subject_word.core
            {
                break;
            }
            found.push(w.core);
            if !w.trail.is_empty() || !subject_word.trail.is_empty() {
                break;
            }
        }
        if found.len() > best.len() {
            best = found;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------
// Body.
// ---------------------------------------------------------------------------------------

fn starts_list_item(text: &str) -> bool {
    ["- ", "+ ", "• ", "– "].iter().any(|m| text.starts_with(m))
}

/// In one-paragraph-per-line text, a line continues the previous one only when that one
/// stopped mid-sentence and this one goes on in lower case.
fn continues_sentence(previous: &str, next: &str) -> bool {
    !previous.ends_with(['.', ':', ';', '!', '?'])
        && next.chars().next().is_some_and(char::is_lowercase)
}

/// Renders the body: cleaned lines, wrapped lines joined, hard breaks kept as `\n`,
/// paragraphs separated by a blank line; border and rule lines dropped.
fn render_body(segs: &[Seg<'_>], markup: bool, wrapped: bool) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut after_hard_break = false;
    let mut flush = |current: &mut String| {
        if !current.is_empty() {
            paragraphs.push(std::mem::take(current));
        }
    };
    for seg in segs {
        let Seg::Line(raw) = seg else {
            flush(&mut current);
            after_hard_break = false;
            continue;
        };
        let (text, hard_break) = clean(raw, markup);
        if text.is_empty() || is_decorative(&text) {
            flush(&mut current);
            after_hard_break = false;
            continue;
        }
        if current.is_empty() {
            current = text;
        } else if after_hard_break || starts_list_item(&text) {
            current.push('\n');
            current.push_str(&text);
        } else if wrapped || continues_sentence(&current, &text) {
            current.push(' ');
            current.push_str(&text);
        } else {
            flush(&mut current);
            current = text;
        }
        after_hard_break = hard_break;
    }
    flush(&mut current);
    paragraphs.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The resolutions converted by pandoc; the crate sits two levels below /work.
    fn documents_dir() -> PathBuf {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/documents"
        ));
        assert!(
            dir.is_dir(),
            "test corpus missing: expected the pandoc-converted resolutions in {}",
            dir.display()
        );
        dir.to_path_buf()
    }

    /// (file stem, text) of every Markdown document, sorted by name.
    fn corpus() -> Vec<(String, String)> {
        let dir = documents_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        files.sort();
        assert_eq!(
            files.len(),
            30,
            "expected the 30 resolutions 1654–1683 in {}",
            dir.display()
        );
        files
            .into_iter()
            .map(|p| {
                let stem = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let text = std::fs::read_to_string(&p)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
                (stem, text)
            })
            .collect()
    }

    fn parse_ok(text: &str) -> ImportedDocument {
        parse_document(text).unwrap_or_else(|e| panic!("expected a document, got {e}"))
    }

    fn is_not_a_document(r: Result<ImportedDocument, ImportError>) -> bool {
        matches!(r, Err(ImportError::NotADocument { .. }))
    }

    #[test]
    fn every_resolution_in_the_corpus() {
        let prefix = "về việc sắp xếp các đơn vị hành chính cấp xã";
        for (stem, text) in corpus() {
            let (number, notation) = stem
                .split_once('_')
                .unwrap_or_else(|| panic!("file name {stem} is not NUMBER_NOTATION"));
            let doc = parse_document(&text).unwrap_or_else(|e| panic!("{stem}: {e}"));
            assert_eq!(doc.number.as_deref(), Some(number), "{stem}: number");
            assert_eq!(doc.notation.as_deref(), Some(notation), "{stem}: notation");
            assert_eq!(doc.doc_type.as_deref(), Some("Nghị quyết"), "{stem}: type");
            assert_eq!(doc.place.as_deref(), Some("Hà Nội"), "{stem}: place");
            assert_eq!(
                doc.issued_date.as_deref(),
                Some("2025-06-16"),
                "{stem}: date"
            );
            assert_eq!(
                doc.issuer.as_deref(),
                Some("ỦY BAN THƯỜNG VỤ QUỐC HỘI"),
                "{stem}: issuer"
            );
            let subject = doc.subject.as_deref().unwrap_or_default();
            assert!(
                subject.to_lowercase().starts_with(prefix),
                "{stem}: subject {subject:?}"
            );
            assert!(
                subject.starts_with("Về việc"),
                "{stem}: case of {subject:?}"
            );
            assert!(subject.ends_with("năm 2025"), "{stem}: end of {subject:?}");
            let body = &doc.body;
            assert!(body.contains("Điều 1"), "{stem}: body lacks Điều 1");
            assert!(!body.contains("**"), "{stem}: emphasis left in body");
            assert!(!body.contains("\\-"), "{stem}: escape left in body");
            assert!(!body.contains("\\."), "{stem}: escape left in body");
            assert!(
                body.starts_with("ỦY BAN THƯỜNG VỤ QUỐC HỘI\n\nCăn cứ"),
                "{stem}: body starts {:?}",
                body.chars().take(60).collect::<String>()
            );
            // The header is not repeated, and the signature block is kept.
            assert!(!body.contains("Hạnh phúc"), "{stem}: motto in body");
            assert!(
                !body.contains(&format!("Số: {number}")),
                "{stem}: number in body"
            );
            assert!(body.contains("Trần Thanh Mẫn"), "{stem}: signer lost");
            assert!(body.contains("Nơi nhận:"), "{stem}: recipients lost");
            assert!(
                body.lines().all(|l| !is_decorative(l)),
                "{stem}: border line left in body"
            );
        }
    }

    #[test]
    fn subjects_get_unit_names_back_from_the_body() {
        let docs: Vec<(String, ImportedDocument)> = corpus()
            .into_iter()
            .map(|(stem, text)| (stem, parse_ok(&text)))
            .collect();
        let subject_of = |number: &str| {
            docs.iter()
                .find(|(stem, _)| stem.starts_with(number))
                .and_then(|(_, d)| d.subject.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            subject_of("1654"),
            "Về việc sắp xếp các đơn vị hành chính cấp xã của tỉnh An Giang năm 2025"
        );
        assert_eq!(
            subject_of("1656"),
            "Về việc sắp xếp các đơn vị hành chính cấp xã của thành phố Hà Nội năm 2025"
        );
        assert_eq!(
            subject_of("1660"),
            "Về việc sắp xếp các đơn vị hành chính cấp xã của tỉnh Đắk Lắk năm 2025"
        );
    }

    #[test]
    fn unit_names_are_restored_only_from_mixed_case() {
        let body = "ỦY BAN NHÂN DÂN TỈNH AN GIANG\n\nGiao tỉnh An Giang và thành phố Cần Thơ, \
                    tỉnh hà tĩnh";
        assert_eq!(
            format_subject("VỀ TỈNH AN GIANG, THÀNH PHỐ CẦN THƠ VÀ TỈNH HÀ TĨNH", body),
            "Về tỉnh An Giang, thành phố Cần Thơ và tỉnh hà tĩnh"
        );
        assert_eq!(format_subject("VỀ VIỆC HỌP", ""), "Về việc họp");
        assert_eq!(format_subject("về việc họp", ""), "Về việc họp");
        assert_eq!(format_subject("\"về việc\"", ""), "\"Về việc\"");
    }

    #[test]
    fn body_is_clean_prose() {
        let (_, text) = corpus().into_iter().next().unwrap_or_default();
        let body = parse_ok(&text).body;
        // Escaped clause numbers, wrapped lines joined, bold names unwrapped.
        assert!(body.contains(
            "\n\n1. Sắp xếp toàn bộ diện tích tự nhiên, quy mô dân số của thị trấn An Phú, \
             xã Vĩnh Hội Đông,"
        ));
        assert!(body.contains("thành xã mới có tên gọi là xã An Phú.\n\n2. "));
        // Italic legal bases lose their stars and the split "số* *203" closes up.
        assert!(body.contains("theo Nghị quyết số 203/2025/QH15;"));
        // Bold glued to the previous word gets its space back.
        assert_eq!(
            clean("gọi là**xã Thất Khê**.", true).0,
            "gọi là xã Thất Khê."
        );
        assert_eq!(clean("**Điều 1.** Phạm vi", true).0, "Điều 1. Phạm vi");
        // The signature table is read column by column with its line breaks.
        assert!(body.contains("Nơi nhận:\n- Chính phủ;\n- Ban Tổ chức Trung ương;"));
        assert!(body.contains("TM. ỦY BAN THƯỜNG VỤ QUỐC HỘI\nCHỦ TỊCH"));
        assert!(!body.contains('*'));
        assert!(!body.contains("\n\n\n"));
    }

    #[test]
    fn cong_van_in_plain_text() {
        let text = "UBND XÃ THẠCH HÀ\n\
                    Số: 05/UBND-VP\n\
                    V/v chuẩn bị họp tổng kết năm\n\
                    Thạch Hà, ngày 03 tháng 01 năm 2026\n\
                    Kính gửi: Các thôn, tổ dân phố\n\
                    Ủy ban nhân dân xã đề nghị các thôn chuẩn bị báo cáo.\n\
                    Trân trọng./.\n";
        let doc = parse_ok(text);
        assert_eq!(doc.doc_type.as_deref(), Some("Công văn"));
        assert_eq!(doc.number.as_deref(), Some("05"));
        assert_eq!(doc.notation.as_deref(), Some("UBND-VP"));
        assert_eq!(doc.subject.as_deref(), Some("Chuẩn bị họp tổng kết năm"));
        assert_eq!(doc.issuer.as_deref(), Some("UBND XÃ THẠCH HÀ"));
        assert_eq!(doc.place.as_deref(), Some("Thạch Hà"));
        assert_eq!(doc.issued_date.as_deref(), Some("2026-01-03"));
        assert_eq!(
            doc.body,
            "Kính gửi: Các thôn, tổ dân phố\n\n\
             Ủy ban nhân dân xã đề nghị các thôn chuẩn bị báo cáo.\n\nTrân trọng./."
        );
    }

    #[test]
    fn cong_van_with_motto_and_wrapped_subject() {
        let text = "UỶ BAN NHÂN DÂN          CỘNG HOÀ XÃ HỘI CHỦ NGHĨA VIỆT NAM\n\
                    XÃ THẠCH HÀ              Độc lập - Tự do - Hạnh phúc\n\
                    Số: 12/UBND\n\
                    V/V tăng cường phòng chống\n\
                    dịch bệnh trên đàn gia súc\n\
                    Thạch Hà, ngày 9 tháng 2 năm 2026\n\
                    Kính gửi: Các thôn\n";
        let doc = parse_ok(text);
        assert_eq!(doc.issuer.as_deref(), Some("UỶ BAN NHÂN DÂN XÃ THẠCH HÀ"));
        assert_eq!(
            doc.subject.as_deref(),
            Some("Tăng cường phòng chống dịch bệnh trên đàn gia súc")
        );
        assert_eq!(doc.issued_date.as_deref(), Some("2026-02-09"));
        assert_eq!(doc.body, "Kính gửi: Các thôn");
    }

    #[test]
    fn text_without_header_is_rejected() {
        let text = "Hôm nay trời đẹp.\nCả thôn đi làm đồng, chiều về họp tổ.\n";
        assert!(is_not_a_document(parse_document(text)));
    }

    #[test]
    fn empty_and_binary_texts_are_rejected() {
        assert!(is_not_a_document(parse_document("")));
        assert!(is_not_a_document(parse_document(" \n\t\r\n\u{a0}")));
        assert!(is_not_a_document(parse_document(
            "Số: 05/UBND-VP\u{0}\nV/v họp"
        )));
        assert!(is_not_a_document(parse_document("Số: 05/UBND-VP\u{7}")));
    }

    #[test]
    fn number_deep_in_the_body_is_not_the_header_number() {
        let text = "UỶ BAN NHÂN DÂN XÃ THẠCH HÀ\n\
                    CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM\n\
                    Độc lập - Tự do - Hạnh phúc\n\
                    Thạch Hà, ngày 05 tháng 3 năm 2026\n\
                    QUYẾT ĐỊNH\n\
                    Về việc thành lập Tổ công tác\n\
                    CHỦ TỊCH ỦY BAN NHÂN DÂN XÃ\n\
                    Căn cứ Luật Tổ chức chính quyền địa phương;\n\
                    Điều 1. Thành lập Tổ công tác.\n\
                    Số: 99/QĐ-UBND\n";
        let doc = parse_ok(text);
        assert_eq!(doc.number, None);
        assert_eq!(doc.notation, None);
        assert_eq!(doc.doc_type.as_deref(), Some("Quyết định"));
        assert_eq!(
            doc.subject.as_deref(),
            Some("Về việc thành lập Tổ công tác")
        );
        assert_eq!(doc.issuer.as_deref(), Some("UỶ BAN NHÂN DÂN XÃ THẠCH HÀ"));
        assert_eq!(doc.issued_date.as_deref(), Some("2026-03-05"));
        assert!(
            doc.body
                .starts_with("CHỦ TỊCH ỦY BAN NHÂN DÂN XÃ\n\nCăn cứ")
        );
        assert!(doc.body.ends_with("Số: 99/QĐ-UBND"));

        // With a header number, the body's citations do not replace it.
        let text = "UBND XÃ A\nSố: 07/QĐ-UBND\nQUYẾT ĐỊNH\nVề việc khen thưởng\n\
                    Căn cứ Quyết định số 12/QĐ-UBND;\nSố: 99/QĐ-UBND\n";
        assert_eq!(parse_ok(text).number.as_deref(), Some("07"));
    }

    #[test]
    fn missing_spaces_are_tolerated() {
        let text = "CHÍNH PHỦ\n\nSố:357/TTr-CP\n\nHà Nội,ngày 09tháng 5 năm2025\n\n\
                    TỜ TRÌNH\n\nVề dự án Luật\n\nKính gửi: Quốc hội\n";
        let doc = parse_ok(text);
        assert_eq!(doc.number.as_deref(), Some("357"));
        assert_eq!(doc.notation.as_deref(), Some("TTr-CP"));
        assert_eq!(doc.place.as_deref(), Some("Hà Nội"));
        assert_eq!(doc.issued_date.as_deref(), Some("2025-05-09"));
        assert_eq!(doc.doc_type.as_deref(), Some("Tờ trình"));
        assert_eq!(doc.subject.as_deref(), Some("Về dự án Luật"));
        assert_eq!(doc.issuer.as_deref(), Some("CHÍNH PHỦ"));
    }

    #[test]
    fn number_and_date_on_one_line() {
        let doc = parse_ok("UBND XÃ A\nSố 05/QĐ-UBND Thạch Hà, ngày 03 tháng 01 năm 2026\n");
        assert_eq!(doc.number.as_deref(), Some("05"));
        assert_eq!(doc.notation.as_deref(), Some("QĐ-UBND"));
        assert_eq!(doc.place.as_deref(), Some("Thạch Hà"));
        assert_eq!(doc.issued_date.as_deref(), Some("2026-01-03"));
        assert_eq!(doc.doc_type, None);
    }

    #[test]
    fn impossible_dates_are_dropped() {
        let date = |line: &str| parse_ok(&format!("Số: 1/QĐ-X\n{line}\n")).issued_date;
        assert_eq!(date("Hà Nội, ngày 31 tháng 2 năm 2025"), None);
        assert_eq!(date("Hà Nội, ngày 29 tháng 2 năm 2025"), None);
        assert_eq!(date("Hà Nội, ngày 0 tháng 5 năm 2025"), None);
        assert_eq!(date("Hà Nội, ngày 10 tháng 13 năm 2025"), None);
        assert_eq!(
            date("Hà Nội, ngày 29 tháng 02 năm 2024").as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(
            date("Hà Nội, ngày 16/6/2025").as_deref(),
            Some("2025-06-16")
        );
        let doc = parse_ok("Số: 1/QĐ-X\nHà Nội, ngày 31 tháng 2 năm 2025\n");
        assert_eq!(doc.place.as_deref(), Some("Hà Nội"));
    }

    #[test]
    fn header_table_without_borders_still_reads() {
        // The corpus header with its table rules removed: columns split at wide gaps.
        let text = "    **ỦY BAN THƯỜNG VỤ\\        **CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM\\\n\
                    \x20        QUỐC HỘI\\                 Độc lập - Tự do - Hạnh phúc\\\n\
                    \x20    \\-\\-\\-\\-\\-\\-\\--**            \\-\\-\\-\\-\\-\\-\\-\\--**\n\
                    \n\
                    \x20  Số: 1654/NQ-UBTVQH15         *Hà Nội, ngày 16 tháng 6 năm 2025*\n\
                    \n\
                    **NGHỊ QUYẾT**\n\
                    \n\
                    VỀ VIỆC ĐẶT TÊN ĐƯỜNG\n\
                    \n\
                    **ỦY BAN THƯỜNG VỤ QUỐC HỘI**\n";
        let doc = parse_ok(text);
        assert_eq!(doc.issuer.as_deref(), Some("ỦY BAN THƯỜNG VỤ QUỐC HỘI"));
        assert_eq!(doc.number.as_deref(), Some("1654"));
        assert_eq!(doc.issued_date.as_deref(), Some("2025-06-16"));
        assert_eq!(doc.subject.as_deref(), Some("Về việc đặt tên đường"));
        assert_eq!(doc.body, "ỦY BAN THƯỜNG VỤ QUỐC HỘI");
    }

    #[test]
    fn grid_table_header() {
        let text = "+---------------------+------------------------------------+\n\
                    | **UBND XÃ THẠCH HÀ** | **CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM** |\n\
                    | Số: 21/KH-UBND      | Thạch Hà, ngày 2 tháng 3 năm 2026  |\n\
                    +---------------------+------------------------------------+\n\
                    \n\
                    **KẾ HOẠCH**\n\
                    \n\
                    Tổ chức Ngày hội đại đoàn kết\n\
                    \n\
                    1\\. Mục đích\n";
        let doc = parse_ok(text);
        assert_eq!(doc.issuer.as_deref(), Some("UBND XÃ THẠCH HÀ"));
        assert_eq!(doc.number.as_deref(), Some("21"));
        assert_eq!(doc.notation.as_deref(), Some("KH-UBND"));
        assert_eq!(doc.doc_type.as_deref(), Some("Kế hoạch"));
        assert_eq!(doc.issued_date.as_deref(), Some("2026-03-02"));
        assert_eq!(
            doc.subject.as_deref(),
            Some("Tổ chức Ngày hội đại đoàn kết")
        );
        assert_eq!(doc.body, "1. Mục đích");
    }

    #[test]
    fn decomposed_letters_are_composed() {
        assert_eq!(compose_vietnamese("Ba\u{301}o ca\u{301}o"), "Báo cáo");
        assert_eq!(compose_vietnamese("e\u{323}\u{302} o\u{31b}\u{323}"), "ệ ợ");
        assert_eq!(compose_vietnamese("A\u{302}\u{301}"), "Ấ");
        assert_eq!(compose_vietnamese("\u{301}x\u{301}"), "\u{301}x\u{301}");
        let text = "Số: 3/QĐ-UBND\nQUYE\u{302}\u{301}T ĐI\u{323}NH\nVê\u{300} viê\u{323}c họp\n";
        let doc = parse_ok(text);
        assert_eq!(doc.doc_type.as_deref(), Some("Quyết định"));
        assert_eq!(doc.subject.as_deref(), Some("Về việc họp"));
    }

    #[test]
    fn abbreviations_follow_appendix_iii() {
        assert_eq!(type_abbreviation("Nghị quyết"), Some("NQ"));
        assert_eq!(type_abbreviation("QUYẾT ĐỊNH"), Some("QĐ"));
        assert_eq!(type_abbreviation("quy định"), Some("QyĐ"));
        assert_eq!(type_abbreviation(" Chương  trình "), Some("CTr"));
        assert_eq!(type_abbreviation("Bản thoả thuận"), Some("TTh"));
        assert_eq!(type_abbreviation("GIẤY UỶ QUYỀN"), Some("GUQ"));
        assert_eq!(type_abbreviation("Giấy ủy quyền"), Some("GUQ"));
        assert_eq!(type_abbreviation("Công văn"), None);
        assert_eq!(type_abbreviation("Thư ngỏ"), None);
        assert_eq!(type_abbreviation(""), None);
        for (name, abbreviation) in DOCUMENT_TYPES {
            assert_eq!(type_abbreviation(name), *abbreviation, "{name}");
        }
    }

    #[test]
    fn no_panics_on_prefixes_and_odd_input() {
        // Two short resolutions and the one whose signature block is a dash-bordered table.
        let samples = ["1670_", "1675_", "1662_"];
        let corpus = corpus();
        let texts: Vec<&String> = corpus
            .iter()
            .filter(|(stem, _)| samples.iter().any(|s| stem.starts_with(s)))
            .map(|(_, text)| text)
            .collect();
        assert_eq!(texts.len(), samples.len());
        for text in texts {
            for (idx, _) in text.char_indices().step_by(97) {
                let _ = parse_document(text.get(..idx).unwrap_or_default());
            }
        }
        let odd = [
            "Số:",
            "Số: /",
            "Số: 12/",
            "Số: 12/ ",
            "Số:99999999999999999999/AB",
            "Số:\u{1F600}/x",
            "ngày tháng năm",
            "Hà Nội, ngày 99 tháng 99 năm 99999999",
            "ngày 1 tháng 1 năm",
            "**",
            "*",
            "\\",
            "\\*",
            "***\\",
            "V/v",
            "V/v ",
            "v/v:",
            "NGHỊ QUYẾT",
            "NGHỊ QUYẾT\n\n",
            "\u{301}",
            "ặ\u{302}\u{301}\u{31b}",
            "Số: 1/Ặ\u{301}",
            "| | |",
            "|\\|",
            "+--+\n|",
            "+--+\n| a | b | c |\n+-+",
            "  --- ---\n a  b\n  --- ---",
            "  --- ---\nxxxxxxxxxx\n  --- ---\nSố: 1/A",
            "# \n## Số: 1/A",
            "\u{feff}",
            "tỉnh",
            "Số: 1/A\nNGHỊ QUYẾT\nVỀ TỈNH\n",
            "Số: 1/A\nNGHỊ QUYẾT\nVỀ THÀNH PHỐ\nthành phố",
            "\r\r\n\r",
            "Đ\u{300}ặ\u{323}",
        ];
        for s in odd {
            let _ = parse_document(s);
            let _ = type_abbreviation(s);
        }
    }

    #[test]
    fn a_table_is_a_document_named_by_its_file_and_headed_by_its_widest_column() {
        let text =
            "Stt,Mã số,Tên 34 tỉnh sau sáp nhập\r\n1,01,Thành phố Hà Nội\r\n18,42,Hà Tĩnh\r\n";
        let doc = parse_table(text, "915_CTK-CSCL").unwrap();
        assert_eq!(doc.number.as_deref(), Some("915"));
        assert_eq!(doc.notation.as_deref(), Some("CTK-CSCL"));
        assert_eq!(doc.subject.as_deref(), Some("Tên 34 tỉnh sau sáp nhập"));
        assert_eq!(
            doc.body,
            "Stt,Mã số,Tên 34 tỉnh sau sáp nhập\n1,01,Thành phố Hà Nội\n18,42,Hà Tĩnh"
        );
        assert_eq!(parse_table(text, "danh-sach").unwrap().number, None);
        let semicolons = "Stt;Mã số;Tên tỉnh\n1;01;Thành phố Hà Nội\n";
        let doc = parse_table(semicolons, "915_CTK-CSCL").unwrap();
        assert_eq!(doc.subject.as_deref(), Some("Tên tỉnh"));
        for bad in ["", "một dòng", "a,b\n", "a,b\n1,2,3\n", "\u{0}\u{1},x\n1,2"] {
            assert!(parse_table(bad, "1_X").is_err(), "{bad:?}");
        }
    }
}
