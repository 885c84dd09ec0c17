//! Calico's label selector language (the subset used by pool `nodeSelector`s and profiles).
//!
//! Grammar, loosest binding first:
//! ```text
//! or    := and ("||" and)*
//! and   := unary ("&&" unary)*
//! unary := "!" unary | "(" or ")" | term
//! term  := "all()" | "has(" key ")"
//!        | key ("==" | "!=") string
//!        | key ["not"] "in" "{" [string ("," string)*] "}"
//!        | key ("contains" | "starts with" | "ends with") string
//! ```
//! Strings are single- or double-quoted. Keys are `[A-Za-z0-9_./-]+` (k8s label keys).
//! An empty selector means `all()`. `k != "v"` and `k not in {...}` match when `k` is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::{Error, Result};

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    source: String,
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Selector {
    /// Parses a selector; errors read `parse selector "<src>": <what> at offset <n>`.
    pub fn parse(source: &str) -> Result<Selector> {
        let mut p = Parser {
            src: source,
            pos: 0,
        };
        p.skip_ws();
        let expr = if p.at_end() {
            Expr::All
        } else {
            let e = p.or().map_err(|m| p.error(m))?;
            p.skip_ws();
            if !p.at_end() {
                return Err(p.error("unexpected trailing input".into()));
            }
            e
        };
        Ok(Selector {
            source: source.to_string(),
            expr,
        })
    }

    /// The selector that matches everything.
    pub fn all() -> Selector {
        Selector {
            source: "all()".into(),
            expr: Expr::All,
        }
    }

    /// True when the labels satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        eval(&self.expr, labels)
    }

    /// The text the selector was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Selector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Selector> {
        Selector::parse(s)
    }
}

fn eval(e: &Expr, labels: &BTreeMap<String, String>) -> bool {
    let get = |k: &String| labels.get(k);
    match e {
        Expr::All => true,
        Expr::Has(k) => labels.contains_key(k),
        Expr::Eq(k, v) => get(k) == Some(v),
        Expr::Ne(k, v) => get(k) != Some(v),
        Expr::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
        Expr::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
        Expr::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
        Expr::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
        Expr::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
        Expr::Not(inner) => !eval(inner, labels),
        Expr::And(a, b) => eval(a, labels) && eval(b, labels),
        Expr::Or(a, b) => eval(a, labels) || eval(b, labels),
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Parser<'_> {
    fn error(&self, msg: String) -> Error {
        Error::invalid(format!(
            "parse selector {:?}: {msg} at offset {}",
            self.src, self.pos
        ))
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    /// Consumes `tok` (after whitespace) if it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Consumes a keyword: `word` not followed by a key character.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with(word) && !rest[word.len()..].starts_with(is_key_char) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    /// Consumes a two-word operator (`not in`, `starts with`): `Ok(false)` when `first` is
    /// not next, an error when `first` is not followed by `second`.
    fn eat_words(&mut self, first: &str, second: &str) -> PResult<bool> {
        if !self.eat_word(first) {
            return Ok(false);
        }
        if !self.eat_word(second) {
            return Err(format!("expected '{second}' after '{first}'"));
        }
        Ok(true)
    }

    fn expect(&mut self, tok: &str) -> PResult<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(format!("expected '{tok}'"))
        }
    }

    fn or(&mut self) -> PResult<Expr> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> PResult<Expr> {
        let mut e = self.unary()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> PResult<Expr> {
        self.skip_ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            self.expect(")")?;
            return Ok(e);
        }
        self.term()
    }

    fn term(&mut self) -> PResult<Expr> {
        self.skip_ws();
        if self.eat("all()") {
            return Ok(Expr::All);
        }
        let start = self.pos;
        if self.eat("has(") {
            let key = self.key()?;
            self.expect(")")?;
            return Ok(Expr::Has(key));
        }
        self.pos = start;
        let key = self.key()?;
        if self.eat("==") {
            return Ok(Expr::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(key, self.string()?));
        }
        if self.eat_words("not", "in")? {
            return Ok(Expr::NotIn(key, self.set()?));
        }
        if self.eat_word("in") {
            return Ok(Expr::In(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Expr::Contains(key, self.string()?));
        }
        if self.eat_words("starts", "with")? {
            return Ok(Expr::StartsWith(key, self.string()?));
        }
        if self.eat_words("ends", "with")? {
            return Ok(Expr::EndsWith(key, self.string()?));
        }
        Err(format!("expected an operator after label {key:?}"))
    }

    fn key(&mut self) -> PResult<String> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !is_key_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err("expected a label name".into());
        }
        let key = self.rest()[..len].to_string();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> PResult<String> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return Err("expected a quoted string".into()),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            return Err("unterminated string".into());
        };
        let s = body[..end].to_string();
        self.pos += end + 2;
        Ok(s)
    }

    fn set(&mut self) -> PResult<BTreeSet<String>> {
        self.expect("{")?;
        let mut set = BTreeSet::new();
        if self.eat("}") {
            return Ok(set);
        }
        loop {
            set.insert(self.string()?);
            if self.eat("}") {
                return Ok(set);
            }
            self.expect(",")?;
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(sel: &str, l: &BTreeMap<String, String>) -> bool {
        Selector::parse(sel).unwrap().matches(l)
    }

    #[test]
    fn node_selector_cases() {
        // A node labelled {foo: bar} is in a pool with `nodeSelector: foo == "bar"`, not in one
        // with `foo != "bar"`; an empty selector means `all()`.
        let node = labels(&[("foo", "bar")]);
        assert!(m(r#"foo == "bar""#, &node));
        assert!(!m(r#"foo != "bar""#, &node));
        assert!(m("all()", &node));
        assert!(m("", &node));
        assert!(m("  ", &node));
    }

    #[test]
    fn operators() {
        let l = labels(&[
            ("a", "1"),
            ("b", "two"),
            ("projectcalico.org/name", "my-host"),
        ]);
        assert!(m("has(a)", &l));
        assert!(!m("has(z)", &l));
        assert!(m("!has(z)", &l));
        assert!(m("a == '1' && b == \"two\"", &l));
        assert!(!m("a == '1' && b == 'three'", &l));
        assert!(m("a == '2' || b == 'two'", &l));
        assert!(m("z != 'x'", &l), "absent key satisfies !=");
        assert!(m("a in {'1', '2'}", &l));
        assert!(!m("a in {}", &l));
        assert!(!m("z in {'1'}", &l));
        assert!(m("z not in {'1'}", &l));
        assert!(!m("a not in {'1'}", &l));
        assert!(m("!(a == '2')", &l));
        assert!(m("!(a == '1' && has(z)) && (b contains 'w' || has(q))", &l));
        assert!(m("b starts with 'tw' && b ends with 'wo'", &l));
        assert!(m("projectcalico.org/name == 'my-host'", &l));
        assert!(m("has(a) && !has(z) || has(q)", &l));
        // && binds tighter than ||.
        assert!(m("has(q) && has(z) || has(a)", &l));
        assert!(!m("has(q) && (has(z) || has(a))", &l));
        assert!(m("!!has(a)", &l));
    }

    #[test]
    fn keys_named_like_keywords() {
        let l = labels(&[("in", "x"), ("notes", "y"), ("has", "z")]);
        assert!(m("in == 'x'", &l));
        assert!(m("notes == 'y'", &l));
        assert!(m("has == 'z'", &l));
    }

    #[test]
    fn parse_errors_are_clear() {
        for (sel, frag) in [
            ("foo ==", "expected a quoted string"),
            ("foo == 'bar", "unterminated string"),
            ("foo", "expected an operator after label \"foo\""),
            ("has(foo", "expected ')'"),
            ("(has(a)", "expected ')'"),
            ("has(a) &&", "expected a label name"),
            ("a in {'x' 'y'}", "expected ','"),
            ("has(a) has(b)", "unexpected trailing input"),
            ("a not 'x'", "expected 'in' after 'not'"),
        ] {
            let e = Selector::parse(sel).unwrap_err();
            assert!(e.is_invalid());
            let s = e.to_string();
            assert!(s.starts_with("parse selector "), "{s}");
            assert!(s.contains(frag), "{sel:?}: {s}");
        }
    }

    #[test]
    fn display_is_source() {
        let s: Selector = "has(a)".parse().unwrap();
        assert_eq!(s.to_string(), "has(a)");
        assert_eq!(Selector::all().as_str(), "all()");
    }
}
