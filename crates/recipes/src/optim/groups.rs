//! timm's split of parameters into weight-decay groups, with its shell-style name patterns.

use super::{NamedParam, ParamGroup};

/// timm `param_groups_weight_decay`: no decay for params with ndim <= 1, names ending in `.bias`,
/// or names matching a pattern of `no_decay` (shell patterns as `fnmatch`, e.g. ViT's `pos_embed`,
/// `cls_token`, or `*.gamma`). With `weight_decay == 0` every parameter goes to the no-decay group.
/// Groups come as timm orders them (no decay first, then decay); empty groups are left out.
pub fn param_groups_weight_decay(
    params: Vec<NamedParam>,
    weight_decay: f64,
    no_decay: &[&str],
) -> Vec<ParamGroup> {
    let (exempt, decayed): (Vec<_>, Vec<_>) = params.into_iter().partition(|p| {
        weight_decay == 0.0
            || p.var.rank() <= 1
            || p.name.ends_with(".bias")
            || no_decay.iter().any(|pattern| fnmatch(&p.name, pattern))
    });
    [(exempt, 0.0), (decayed, weight_decay)]
        .into_iter()
        .filter(|(params, _)| !params.is_empty())
        .map(|(params, weight_decay)| ParamGroup {
            params,
            weight_decay,
        })
        .collect()
}

/// Python's `fnmatch.fnmatchcase(name, pattern)`: `*` matches any run of characters, `?` one
/// character, `[seq]` / `[!seq]` one character in / not in `seq` (with `a-z` ranges); a `[`
/// without its closing `]` is literal. Case-sensitive, as on POSIX.
pub fn fnmatch(name: &str, pattern: &str) -> bool {
    let tokens = parse_pattern(pattern);
    let name: Vec<char> = name.chars().collect();
    glob_match(&tokens, &name)
}

/// One element of a shell pattern.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Star,
    AnyChar,
    Char(char),
    Set(CharSet),
}

/// A bracket expression: single characters and inclusive ranges, possibly negated.
#[derive(Debug, Clone, PartialEq)]
struct CharSet {
    negated: bool,
    chars: Vec<char>,
    ranges: Vec<(char, char)>,
}

impl CharSet {
    fn matches(&self, c: char) -> bool {
        let inside =
            self.chars.contains(&c) || self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        inside != self.negated
    }
}

/// Tokenizes a pattern as `fnmatch.translate` reads it.
fn parse_pattern(pattern: &str) -> Vec<Token> {
    let p: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        i += 1;
        match c {
            '*' if tokens.last() == Some(&Token::Star) => {}
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::AnyChar),
            '[' => match bracket_end(&p, i) {
                Some(j) => {
                    tokens.push(Token::Set(parse_set(&p[i..j])));
                    i = j + 1;
                }
                None => tokens.push(Token::Char('[')),
            },
            c => tokens.push(Token::Char(c)),
        }
    }
    tokens
}

/// Index of the `]` closing a bracket whose body starts at `i` (a leading `!` and a first `]`
/// belong to the body), or `None` when it is unclosed.
fn bracket_end(p: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if p.get(j) == Some(&'!') {
        j += 1;
    }
    if p.get(j) == Some(&']') {
        j += 1;
    }
    (j..p.len()).find(|&k| p[k] == ']')
}

/// A bracket body as `fnmatch.translate` splits it: a hyphen makes a range when it is not the
/// first character and not right after a range's end; reversed ranges match nothing (both
/// endpoints are dropped); every other character is literal.
fn parse_set(body: &[char]) -> CharSet {
    let (negated, r) = match body.split_first() {
        Some(('!', rest)) => (true, rest),
        _ => (false, body),
    };
    let mut chunks: Vec<Vec<char>> = Vec::new();
    let (mut start, mut from) = (0, 1);
    while let Some(k) = (from..r.len()).find(|&k| r[k] == '-') {
        chunks.push(r[start..k].to_vec());
        start = k + 1;
        from = k + 3;
    }
    match (r.get(start..).filter(|c| !c.is_empty()), chunks.last_mut()) {
        (Some(last), _) => chunks.push(last.to_vec()),
        (None, Some(prev)) => prev.push('-'),
        (None, None) => {}
    }
    for k in (1..chunks.len()).rev() {
        if let (Some(&lo), Some(&hi)) = (chunks[k - 1].last(), chunks[k].first()) {
            if lo > hi {
                let tail = chunks.remove(k);
                chunks[k - 1].pop();
                chunks[k - 1].extend_from_slice(&tail[1..]);
            }
        }
    }
    let mut set = CharSet {
        negated,
        chars: Vec::new(),
        ranges: Vec::new(),
    };
    let last = chunks.len().saturating_sub(1);
    for (k, chunk) in chunks.iter().enumerate() {
        let lo = usize::from(k > 0);
        let hi = chunk.len() - usize::from(k < last && !chunk.is_empty());
        set.chars.extend(chunk.get(lo..hi).unwrap_or_default());
        if k > 0 {
            if let (Some(&a), Some(&b)) = (chunks[k - 1].last(), chunk.first()) {
                set.ranges.push((a, b));
            }
        }
    }
    set
}

/// Backtracking glob match: on a mismatch, the last `*` takes one more character.
fn glob_match(tokens: &[Token], name: &[char]) -> bool {
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(Token::AnyChar) => true,
            Some(Token::Char(c)) => *c == name[n],
            Some(Token::Set(set)) => set.matches(name[n]),
            None => false,
        };
        if step {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_ranges() {
        assert!(fnmatch("b", "[a-c]"));
        assert!(!fnmatch("d", "[a-c]"));
        assert!(fnmatch("d", "[!a-c]"));
        assert!(fnmatch("-", "[a-]"));
        assert!(fnmatch("-", "[-a]"));
        assert!(!fnmatch("b", "[c-a]"));
        assert!(fnmatch("b", "[!c-a]"));
        assert!(fnmatch("]", "[]]"));
        assert!(fnmatch("-", "[a-c-e]"));
        assert!(!fnmatch("d", "[a-c-e]"));
        assert!(fnmatch("[x", "[x"));
        assert!(fnmatch("", "*"));
        assert!(!fnmatch("", "?"));
        assert!(fnmatch("abcabd", "*ab?"));
    }
}
