//! Answer extraction from a completion, by priority: `\boxed{…}`, `<answer>…</answer>`, "final answer",
//! "Answer:", then the last math span or number. The rightmost match at the highest priority wins. When the
//! completion has a `</think>`, only the text after it is searched.

use regex::Regex;
use std::sync::LazyLock;

static BOLD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\*\*([^*\n]{1,200})\*\*").expect("static regex"));
static ANSWER_TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)<answer>(.*?)</answer>").expect("static regex"));
static FINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)final\s+answer\s*(?:is|:|：|=)?\s*(?:is)?\s*:?\s*([^\n]+)").expect("static regex")
});
static ANSWER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:\banswer\s*(?::|：|is\b)|\bthe\s+result\s+is\b)\s*([^\n]+)").expect("static regex")
});
static MATH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)\$\$(.+?)\$\$|\$([^$]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]").expect("static regex"));
static WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|[^\\A-Za-z])[A-Za-z]{3,}").expect("static regex"));
static SENTENCE_END: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\.(?:\s|$)").expect("static regex"));
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?%?").expect("static regex")
});

/// Where an extracted answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Boxed,
    AnswerTag,
    FinalAnswer,
    AnswerColon,
    LastExpression,
}

/// Contents of every `\boxed{…}` / `\fbox{…}` (balanced braces), in order.
pub fn boxes(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &s[i..];
        let skip = if rest.starts_with("\\boxed") {
            6
        } else if rest.starts_with("\\fbox") {
            5
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        i += skip;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            let start = i + 1;
            let mut depth = 0usize;
            let mut end = None;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 1,
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            match end {
                Some(e) => out.push(&s[start..e]),
                None => return out,
            }
        } else {
            // `\boxed 5`
            let start = i;
            while i < b.len() && !matches!(b[i], b' ' | b'$' | b'\n' | b'.' | b',') {
                i += 1;
            }
            if i > start {
                out.push(&s[start..i]);
            }
        }
    }
    out
}

/// Strip `$…$` delimiters, trailing punctuation and surrounding space.
pub fn clean(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let before = t;
        t = t.trim_end_matches(['.', ',', ';', '。']).trim();
        for (a, b) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")] {
            if t.len() >= a.len() + b.len() && t.starts_with(a) && t.ends_with(b) {
                t = t[a.len()..t.len() - b.len()].trim();
            }
        }
        if t == before {
            break;
        }
    }
    t.to_string()
}

/// Answer from a line of prose after "final answer" / "Answer:": its first math span, else the line.
fn from_line(line: &str) -> String {
    let line = clean(line);
    if let Some(c) = MATH.captures(&line)
        && let Some(m) = (1..=4).find_map(|i| c.get(i))
    {
        return clean(m.as_str());
    }
    let line = match SENTENCE_END.find(&line) {
        Some(m) => clean(&line[..m.start()]),
        None => line,
    };
    if let Some(c) = MATH.captures(&line)
        && let Some(m) = (1..=4).find_map(|i| c.get(i))
    {
        return clean(m.as_str());
    }
    line
}

/// The last math span or number in prose.
fn last_expression(s: &str) -> Option<String> {
    let m = MATH.captures_iter(s).last().and_then(|c| {
        let whole = c.get(0)?;
        let inner = (1..=4).find_map(|i| c.get(i))?;
        Some((whole.end(), clean(inner.as_str())))
    });
    let n = NUMBER.find_iter(s).last().map(|m| (m.end(), m.as_str().to_string()));
    match (m, n) {
        (Some(m), Some(n)) => Some(if m.0 >= n.0 { m.1 } else { n.1 }),
        (Some(m), None) => Some(m.1),
        (None, Some(n)) => Some(n.1),
        (None, None) => None,
    }
}

/// Extract answer candidates (best first) and where they came from.
pub fn extract(completion: &str) -> Option<(Vec<String>, Source)> {
    // With an R1 think block, only what follows the reasoning is the answer (a draft `\boxed{}` inside the
    // CoT must not win over the final answer).
    let after = match completion.rfind("</think>") {
        Some(i) if !completion[i + 8..].trim().is_empty() => &completion[i + 8..],
        _ => completion,
    };
    let text = BOLD.replace_all(after, "$1");
    let bx = boxes(&text);
    if bx.is_empty() && text.contains("\\boxed{") {
        // An unclosed box is a malformed answer, not a reason to fall back to prose.
        return None;
    }
    if let Some(last) = bx.last() {
        let mut c = vec![clean(last)];
        if bx.len() > 1 {
            c.push(format!("\\{{{}\\}}", bx.iter().map(|b| clean(b)).collect::<Vec<_>>().join(",")));
        }
        return Some((c, Source::Boxed));
    }
    if let Some(c) = ANSWER_TAG.captures_iter(&text).last() {
        let inner = c.get(1).map_or("", |m| m.as_str());
        let inner_clean = clean(inner);
        if !inner_clean.is_empty() {
            let prose_like = WORD.is_match(&inner_clean.replace("\\text", "").replace("\\", " \\"));
            let parses = !prose_like && super::lex::lex(&inner_clean).and_then(super::ast::parse).is_some();
            if !parses && let Some((p, _)) = prose(inner) {
                return Some((p, Source::AnswerTag));
            }
            return Some((vec![inner_clean], Source::AnswerTag));
        }
    }
    prose(&text)
}

fn prose(text: &str) -> Option<(Vec<String>, Source)> {
    if let Some(c) = FINAL.captures_iter(text).last() {
        let a = from_line(c.get(1).map_or("", |m| m.as_str()));
        if !a.is_empty() {
            return Some((vec![a], Source::FinalAnswer));
        }
    }
    if let Some(c) = ANSWER.captures_iter(text).last() {
        let a = from_line(c.get(1).map_or("", |m| m.as_str()));
        if !a.is_empty() {
            return Some((vec![a], Source::AnswerColon));
        }
    }
    last_expression(text).map(|a| (vec![a], Source::LastExpression))
}
