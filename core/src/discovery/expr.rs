//! The selector expression language: [`parse_selector`].

use std::fmt;
use std::sync::Arc;

use super::selector::{
    All, Any, Enabled, Fallback, HasTag, MetadataEquals, MetadataIn, Not, Selector, Version,
};

/// How deeply `!` and `prefer(...)` may nest.
const MAX_DEPTH: usize = 32;

/// Why a selector expression was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at byte {position}: {kind}")]
pub struct ParseError {
    /// Byte offset in the expression where parsing failed.
    pub position: usize,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

/// What went wrong in a selector expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The expression holds no term.
    #[error("the expression is empty")]
    Empty,
    /// A token that does not fit the grammar.
    #[error("expected {expected}, found {found}")]
    Unexpected {
        /// What the grammar allows here.
        expected: &'static str,
        /// What was found (a token, or "end of input").
        found: String,
    },
    /// A quoted value without its closing quote.
    #[error("unterminated quoted value")]
    UnterminatedQuote,
    /// A version pattern with `*` anywhere but at its end.
    #[error("invalid version pattern {0:?}: `*` may only end the pattern")]
    InvalidPattern(String),
    /// A status other than `enabled` or `disabled`.
    #[error("invalid status {0:?}: expected enabled or disabled")]
    InvalidStatus(String),
    /// `!` and `prefer(...)` nested too deeply.
    #[error("nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

/// Parses a selector expression such as
/// `version=v1.*,zone=eu-1,group in (a|b),tag=canary,!tag=slow`.
///
/// Terms separated by commas must all hold. Usable directly as a `clap`
/// value parser. The grammar:
///
/// ```text
/// expr  := term ("," term)*                  all terms must hold
/// term  := "!" term                          negation
///        | "prefer" "(" expr ")"             a preference (Fallback)
///        | "enabled"                         status is enabled
///        | key "=" value | key "!=" value
///        | key "in" "(" value (("|" | ",") value)* ")"
/// value := word | "\"" quoted "\""           quoted: \" and \\ escapes
/// ```
///
/// Keys: `version` (a [`Version`] pattern such as `v1.*`), `tag` (a
/// [`HasTag`]), `status` (`enabled` or `disabled`); any other key is a
/// metadata key ([`MetadataEquals`], [`MetadataIn`]). A word is a run of
/// characters other than whitespace and `, ( ) | = ! "`. `prefer(...)` is a
/// [`Fallback`]: it narrows the set unless that would leave no instance.
///
/// ```
/// use fyerrpc::discovery::{apply, parse_selector};
/// use fyerrpc::Instance;
///
/// let selector = parse_selector("version=v1.*, group in (a|b), !tag=slow, prefer(zone=eu-1)")?;
/// let set = [
///     Instance::new("x", "Greet", "h:1").unwrap().with_metadata("group", "a"),
///     Instance::new("y", "Greet", "h:2").unwrap().with_metadata("group", "c"),
/// ];
/// assert_eq!(apply(&*selector, &set), [set[0].clone()]);
///
/// let err = parse_selector("zone=eu-1,group in a|b").unwrap_err();
/// assert_eq!(err.position, 19);
/// assert_eq!(
///     err.to_string(),
///     "invalid selector at byte 19: expected `(`, found word `a`"
/// );
/// # Ok::<(), fyerrpc::discovery::ParseError>(())
/// ```
pub fn parse_selector(expr: &str) -> Result<Arc<dyn Selector>, ParseError> {
    let tokens = tokenize(expr)?;
    let mut parser = Parser { tokens, next: 0 };
    if parser.peek().1 == Token::End {
        return Err(parser.error(ParseErrorKind::Empty));
    }
    let selector = parser.list(0)?;
    parser.expect(&Token::End, "`,` or end of input")?;
    Ok(selector)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Comma,
    Open,
    Close,
    Pipe,
    Eq,
    NotEq,
    Bang,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Word(w) => write!(f, "word `{w}`"),
            Self::Quoted(q) => write!(f, "quoted value {q:?}"),
            Self::Comma => f.write_str("`,`"),
            Self::Open => f.write_str("`(`"),
            Self::Close => f.write_str("`)`"),
            Self::Pipe => f.write_str("`|`"),
            Self::Eq => f.write_str("`=`"),
            Self::NotEq => f.write_str("`!=`"),
            Self::Bang => f.write_str("`!`"),
            Self::End => f.write_str("end of input"),
        }
    }
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ',' | '(' | ')' | '|' | '=' | '!' | '"')
}

/// Splits the expression into tokens with their byte offsets, ending with
/// [`Token::End`].
fn tokenize(expr: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = expr.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        let token = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '"' => Token::Quoted(quoted(&mut chars, at)?),
            '!' => {
                chars.next();
                if chars.next_if(|&(_, c)| c == '=').is_some() {
                    Token::NotEq
                } else {
                    Token::Bang
                }
            }
            ',' | '(' | ')' | '|' | '=' => {
                chars.next();
                match c {
                    ',' => Token::Comma,
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '|' => Token::Pipe,
                    _ => Token::Eq,
                }
            }
            _ => {
                let mut word = String::new();
                while let Some((_, c)) = chars.next_if(|&(_, c)| is_word_char(c)) {
                    word.push(c);
                }
                Token::Word(word)
            }
        };
        tokens.push((at, token));
    }
    tokens.push((expr.len(), Token::End));
    Ok(tokens)
}

/// Reads a quoted value starting at the opening quote at byte `at`.
fn quoted(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    at: usize,
) -> Result<String, ParseError> {
    chars.next();
    let mut value = String::new();
    loop {
        match chars.next() {
            Some((_, '"')) => return Ok(value),
            Some((_, '\\')) => match chars.next() {
                Some((_, c)) => value.push(c),
                None => break,
            },
            Some((_, c)) => value.push(c),
            None => break,
        }
    }
    Err(ParseError {
        position: at,
        kind: ParseErrorKind::UnterminatedQuote,
    })
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> &(usize, Token) {
        // The last token is always End, and `bump` never moves past it.
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> (usize, Token) {
        let token = self.peek().clone();
        if token.1 != Token::End {
            self.next += 1;
        }
        token
    }

    fn error(&self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            position: self.peek().0,
            kind,
        }
    }

    fn unexpected(&self, expected: &'static str) -> ParseError {
        self.error(ParseErrorKind::Unexpected {
            expected,
            found: self.peek().1.to_string(),
        })
    }

    fn expect(&mut self, token: &Token, expected: &'static str) -> Result<(), ParseError> {
        if &self.peek().1 == token {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    /// `term ("," term)*`: one selector, or `All` of several.
    fn list(&mut self, depth: usize) -> Result<Arc<dyn Selector>, ParseError> {
        let mut terms = vec![self.term(depth)?];
        while self.peek().1 == Token::Comma {
            self.bump();
            terms.push(self.term(depth)?);
        }
        Ok(match terms.len() {
            1 => terms.swap_remove(0),
            _ => Arc::new(All(terms)),
        })
    }

    fn term(&mut self, depth: usize) -> Result<Arc<dyn Selector>, ParseError> {
        if depth >= MAX_DEPTH {
            return Err(self.error(ParseErrorKind::TooDeep));
        }
        let (at, token) = self.peek().clone();
        let key = match token {
            Token::Bang => {
                self.bump();
                return Ok(Arc::new(Not(self.term(depth + 1)?)));
            }
            Token::Word(word) => {
                self.bump();
                word
            }
            _ => return Err(self.unexpected("a selector term")),
        };
        match (key.as_str(), &self.peek().1) {
            ("prefer", Token::Open) => self.prefer(depth),
            ("enabled", Token::Comma | Token::Close | Token::End) => Ok(Arc::new(Enabled)),
            _ => self.comparison(at, key),
        }
    }

    /// `prefer ( expr )`, after the word `prefer`.
    fn prefer(&mut self, depth: usize) -> Result<Arc<dyn Selector>, ParseError> {
        self.bump();
        let inner = self.list(depth + 1)?;
        self.expect(&Token::Close, "`,` or `)`")?;
        Ok(Arc::new(Fallback(inner)))
    }

    /// `= value`, `!= value` or `in (values)`, after the key.
    fn comparison(&mut self, at: usize, key: String) -> Result<Arc<dyn Selector>, ParseError> {
        let operator = self.peek().1.clone();
        match operator {
            Token::Eq | Token::NotEq => {
                self.bump();
                let selector = equals(at, &key, self.value()?)?;
                Ok(match operator {
                    Token::NotEq => Arc::new(Not(selector)),
                    _ => selector,
                })
            }
            Token::Word(w) if w == "in" => {
                self.bump();
                let values = self.values()?;
                one_of(at, key, values)
            }
            _ => Err(self.unexpected("`=`, `!=` or `in`")),
        }
    }

    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek().1.clone() {
            Token::Word(v) | Token::Quoted(v) => {
                self.bump();
                Ok(v)
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    /// `( value (("|" | ",") value)* )`.
    fn values(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect(&Token::Open, "`(`")?;
        let mut values = vec![self.value()?];
        while matches!(self.peek().1, Token::Pipe | Token::Comma) {
            self.bump();
            values.push(self.value()?);
        }
        self.expect(&Token::Close, "`|` or `)`")?;
        Ok(values)
    }
}

/// The selector for `key = value`; `at` is the key's offset, for errors.
fn equals(at: usize, key: &str, value: String) -> Result<Arc<dyn Selector>, ParseError> {
    let fail = |kind| Err(ParseError { position: at, kind });
    match key {
        "version" => match value.find('*') {
            Some(i) if i + 1 != value.len() => fail(ParseErrorKind::InvalidPattern(value)),
            _ => Ok(Arc::new(Version(value))),
        },
        "tag" => Ok(Arc::new(HasTag(value))),
        "status" => match value.as_str() {
            "enabled" => Ok(Arc::new(Enabled)),
            "disabled" => Ok(Arc::new(Not(Arc::new(Enabled)))),
            _ => fail(ParseErrorKind::InvalidStatus(value)),
        },
        _ => Ok(Arc::new(MetadataEquals::new(key, value))),
    }
}

/// The selector for `key in (values)`.
fn one_of(at: usize, key: String, values: Vec<String>) -> Result<Arc<dyn Selector>, ParseError> {
    match key.as_str() {
        "version" | "tag" | "status" => {
            let any = values
                .into_iter()
                .map(|v| equals(at, &key, v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(Any(any)))
        }
        _ => Ok(Arc::new(MetadataIn { key, values })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::apply;
    use crate::instance::{Instance, Status};

    fn set() -> Vec<Instance> {
        let mk = |id: &str, version: &str, meta: &[(&str, &str)]| {
            let i = Instance::new(id, "Greet", "127.0.0.1:9000")
                .and_then(|i| i.with_version(version))
                .unwrap();
            meta.iter().fold(i, |i, (k, v)| i.with_metadata(*k, *v))
        };
        vec![
            mk("a", "v1", &[("zone", "eu-1"), ("group", "a")]),
            mk(
                "b",
                "v1.2",
                &[("zone", "eu-1"), ("group", "b"), ("tags", "canary")],
            ),
            mk(
                "c",
                "v2",
                &[("zone", "eu-1"), ("group", "a"), ("tags", "canary,slow")],
            ),
            mk(
                "d",
                "v1",
                &[("zone", "us-1"), ("group", "c"), ("note", "a b,c")],
            )
            .with_status(Status::Disabled),
        ]
    }

    fn ids(expr: &str) -> Vec<String> {
        let selector = parse_selector(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        apply(&*selector, &set())
            .iter()
            .map(|i| i.id().to_owned())
            .collect()
    }

    fn err(expr: &str) -> ParseError {
        match parse_selector(expr) {
            Ok(s) => panic!("{expr} parsed as {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_flag_example() {
        let e = "version=v1.*,zone=eu-1,group in (a|b),tag=canary,!tag=slow";
        assert_eq!(ids(e), ["b"]);
    }

    #[test]
    fn each_term() {
        assert_eq!(ids("version=v1"), ["a", "d"]);
        assert_eq!(ids("version=v1.*"), ["a", "b", "d"]);
        assert_eq!(ids("version in (v2|v1.2)"), ["b", "c"]);
        assert_eq!(ids("zone=us-1"), ["d"]);
        assert_eq!(ids("zone!=us-1"), ["a", "b", "c"]);
        assert_eq!(ids("group in (b, c)"), ["b", "d"]);
        assert_eq!(ids("!group in (a|b)"), ["d"]);
        assert_eq!(ids("tag=slow"), ["c"]);
        assert_eq!(ids("tag in (slow|canary)"), ["b", "c"]);
        assert_eq!(ids("enabled"), ["a", "b", "c"]);
        assert_eq!(ids("status=disabled"), ["d"]);
        assert_eq!(ids("!enabled"), ["d"]);
        assert_eq!(ids("!!enabled"), ["a", "b", "c"]);
        assert_eq!(ids(r#"note="a b,c""#), ["d"]);
        assert_eq!(ids(r#"note="a b,c\"""#), Vec::<String>::new());
        assert_eq!(ids("in=x"), Vec::<String>::new(), "`in` may be a key");
    }

    #[test]
    fn preferences_fall_back() {
        assert_eq!(ids("prefer(zone=mars)"), ["a", "b", "c", "d"]);
        assert_eq!(ids("version=v1.*, prefer(zone=us-1)"), ["d"]);
        assert_eq!(ids("version=v1.*,enabled,prefer(zone=us-1)"), ["a", "b"]);
        assert_eq!(ids("group=a, prefer(tag=canary, !tag=slow)"), ["a", "c"]);
        assert_eq!(ids("prefer(prefer(group=b))"), ["b"]);
        assert_eq!(
            ids("prefer=x"),
            Vec::<String>::new(),
            "`prefer` may be a key"
        );
    }

    #[test]
    fn whitespace_is_free() {
        assert_eq!(
            ids("  version = v1.* ,\tgroup in( a | b ) , ! tag = slow "),
            ["a", "b"]
        );
    }

    #[test]
    fn invalid_expressions_say_where() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "the expression is empty"),
            ("   ", 3, "the expression is empty"),
            ("zone", 4, "expected `=`, `!=` or `in`, found end of input"),
            ("zone=", 5, "expected a value, found end of input"),
            (
                "zone=eu,",
                8,
                "expected a selector term, found end of input",
            ),
            (",zone=eu", 0, "expected a selector term, found `,`"),
            (
                "zone=eu group=a",
                8,
                "expected `,` or end of input, found word `group`",
            ),
            ("group in a", 9, "expected `(`, found word `a`"),
            (
                "group in (a|b",
                13,
                "expected `|` or `)`, found end of input",
            ),
            ("group in ()", 10, "expected a value, found `)`"),
            (
                "prefer(zone=eu",
                14,
                "expected `,` or `)`, found end of input",
            ),
            ("zone=eu)", 7, "expected `,` or end of input, found `)`"),
            ("zone==eu", 5, "expected a value, found `=`"),
            (r#"zone="eu"#, 5, "unterminated quoted value"),
            (
                "version=v*1",
                0,
                r#"invalid version pattern "v*1": `*` may only end the pattern"#,
            ),
            ("a=1,version in (v1|*x)", 4, "invalid version pattern"),
            (
                "status=sleepy",
                0,
                r#"invalid status "sleepy": expected enabled or disabled"#,
            ),
            ("!", 1, "expected a selector term, found end of input"),
        ];
        for (expr, position, message) in cases {
            let e = err(expr);
            assert_eq!(e.position, *position, "{expr}: {e}");
            assert!(e.kind.to_string().starts_with(message), "{expr}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let e = err(&"!".repeat(10_000));
        assert_eq!(e.kind, ParseErrorKind::TooDeep);
        let e = err(&format!(
            "{}enabled{}",
            "prefer(".repeat(100),
            ")".repeat(100)
        ));
        assert_eq!(e.kind, ParseErrorKind::TooDeep);
        assert_eq!(ids(&format!("{}enabled", "!".repeat(30))), ["a", "b", "c"]);
    }

    #[test]
    fn errors_carry_the_position_in_their_message() {
        assert_eq!(
            err("zone=eu,,").to_string(),
            "invalid selector at byte 8: expected a selector term, found `,`"
        );
    }
}
