//! TSIG key files in BIND's format, as `tsig-keygen` writes them:
//!
//! ```text
//! key "lifeboat-lab" {
//!         algorithm hmac-sha256;
//!         secret "kQ2B0Bqg6ZQH9WYhXr+4yPpI2pQ7cJ0mAL9hHh8o3Bc=";
//! };
//! ```
//!
//! The parser takes exactly one `key` statement, quoted or bare name and algorithm, `#`, `//` and
//! `/* */` comments and any layout. Names and algorithms are lower-cased (DNS names are
//! case-insensitive; TSIG signs the canonical, lower-case form).
//!
//! Secrecy: error messages give a line and what was expected, never any text of the file, so no
//! part of a secret can end up in an error or a log; `Debug` of a [`TsigKey`] hides the secret.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// A TSIG key: its name, algorithm and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    name: String,
    algorithm: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &format_args!("<{} bytes, hidden>", self.secret.len()))
            .finish()
    }
}

/// Why a key file cannot be used: where (1-based line; 0 for the whole file) and what was expected.
/// Never contains text from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileProblem {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for KeyFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl TsigKey {
    /// A key from its parts (for tests and callers that hold keys elsewhere).
    pub fn new(name: &str, algorithm: &str, secret: Vec<u8>) -> TsigKey {
        TsigKey {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            algorithm: algorithm.to_ascii_lowercase(),
            secret,
        }
    }

    /// The key's name, lower case, without a trailing dot (`lifeboat-lab`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm as written in the file, lower case (`hmac-sha256`).
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The decoded secret.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Parses the text of a key file. Any algorithm name is accepted here; whether it can be used is
    /// the DNS router's business.
    pub fn parse(text: &str) -> Result<TsigKey, KeyFileProblem> {
        let tokens = tokenize(text)?;
        let mut p = Parser { tokens, pos: 0 };
        let key = p.key_statement()?;
        if let Some(t) = p.peek() {
            let line = t.line;
            return Err(if matches!(&t.kind, Kind::Word(w) if w.eq_ignore_ascii_case("key")) {
                problem(line, "a second key statement: the file must hold exactly one key")
            } else {
                problem(line, "unexpected text after the key statement")
            });
        }
        Ok(key)
    }
}

fn problem(line: usize, reason: &str) -> KeyFileProblem {
    KeyFileProblem {
        line,
        reason: reason.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Semi,
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    line: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, KeyFileProblem> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars, &mut line),
            '/' if chars.peek() == Some(&'*') => {
                let start = line;
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                    }
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err(problem(start, "a /* comment that is never closed"));
                }
            }
            '{' => out.push(Token { kind: Kind::Open, line }),
            '}' => out.push(Token {
                kind: Kind::Close,
                line,
            }),
            ';' => out.push(Token { kind: Kind::Semi, line }),
            '"' => {
                let start = line;
                let mut s = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => {
                            if let Some(n) = chars.next() {
                                if n == '\n' {
                                    line += 1;
                                }
                                s.push(n);
                            }
                        }
                        '\n' => {
                            line += 1;
                            s.push(c);
                        }
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err(problem(start, "a quoted string that is never closed"));
                }
                out.push(Token {
                    kind: Kind::Quoted(s),
                    line: start,
                });
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Token {
                    kind: Kind::Word(s),
                    line,
                });
            }
        }
    }
    Ok(out)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            *line += 1;
            break;
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn last_line(&self) -> usize {
        self.tokens.last().map_or(0, |t| t.line)
    }

    /// The next token, which must be `kind`.
    fn expect(&mut self, want: &Kind, what: &str) -> Result<(), KeyFileProblem> {
        let end = self.last_line();
        match self.next() {
            Some(t) if &t.kind == want => Ok(()),
            Some(t) => Err(problem(t.line, &format!("expected {what}"))),
            None => Err(problem(end, &format!("the file ends where {what} was expected"))),
        }
    }

    /// A word or quoted string.
    fn value(&mut self, what: &str) -> Result<(String, usize), KeyFileProblem> {
        let end = self.last_line();
        match self.next() {
            Some(Token {
                kind: Kind::Word(s) | Kind::Quoted(s),
                line,
            }) => Ok((s.clone(), *line)),
            Some(t) => Err(problem(t.line, &format!("expected {what}"))),
            None => Err(problem(end, &format!("the file ends where {what} was expected"))),
        }
    }

    fn key_statement(&mut self) -> Result<TsigKey, KeyFileProblem> {
        match self.next() {
            None => return Err(problem(0, "no key statement (the file is empty or all comments)")),
            Some(Token {
                kind: Kind::Word(w), ..
            }) if w.eq_ignore_ascii_case("key") => {}
            Some(t) => return Err(problem(t.line, "expected `key \"NAME\" {`")),
        }
        let (name, name_line) = self.value("the key's name")?;
        let name = name.trim_end_matches('.');
        if name.is_empty() {
            return Err(problem(name_line, "the key's name is empty"));
        }
        if !valid_key_name(name) {
            return Err(problem(
                name_line,
                "the key's name is not a DNS name (letters, digits, '-', '_' and dots; labels of 1 to 63 characters)",
            ));
        }
        self.expect(&Kind::Open, "`{` after the key's name")?;
        let mut algorithm: Option<String> = None;
        let mut secret: Option<Vec<u8>> = None;
        loop {
            let end = self.last_line();
            let (clause, line) = match self.next() {
                Some(Token { kind: Kind::Close, .. }) => break,
                Some(Token {
                    kind: Kind::Word(w),
                    line,
                }) => (w.to_ascii_lowercase(), *line),
                Some(t) => return Err(problem(t.line, "expected `algorithm`, `secret` or `}`")),
                None => return Err(problem(end, "the file ends inside the key statement (missing `};`)")),
            };
            match clause.as_str() {
                "algorithm" => {
                    if algorithm.is_some() {
                        return Err(problem(line, "a second `algorithm`"));
                    }
                    let (alg, alg_line) = self.value("the algorithm's name")?;
                    if alg.is_empty()
                        || !alg
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    {
                        return Err(problem(alg_line, "the algorithm is not a name like hmac-sha256"));
                    }
                    algorithm = Some(alg.trim_end_matches('.').to_ascii_lowercase());
                    self.expect(&Kind::Semi, "`;` after the algorithm")?;
                }
                "secret" => {
                    if secret.is_some() {
                        return Err(problem(line, "a second `secret`"));
                    }
                    let (s, s_line) = self.value("the secret (base64, in quotes)")?;
                    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                    let bytes = B64
                        .decode(compact.as_bytes())
                        .map_err(|_| problem(s_line, "the secret is not valid base64"))?;
                    if bytes.is_empty() {
                        return Err(problem(s_line, "the secret is empty"));
                    }
                    secret = Some(bytes);
                    self.expect(&Kind::Semi, "`;` after the secret")?;
                }
                _ => {
                    return Err(problem(
                        line,
                        "unknown clause in the key statement (only `algorithm` and `secret`)",
                    ))
                }
            }
        }
        self.expect(&Kind::Semi, "`;` after the key statement's `}`")?;
        let algorithm = algorithm.ok_or_else(|| problem(name_line, "the key has no `algorithm`"))?;
        let secret = secret.ok_or_else(|| problem(name_line, "the key has no `secret`"))?;
        Ok(TsigKey {
            name: name.to_ascii_lowercase(),
            algorithm,
            secret,
        })
    }
}

fn valid_key_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_B64: &str = "kQ2B0Bqg6ZQH9WYhXr+4yPpI2pQ7cJ0mAL9hHh8o3Bc=";

    #[test]
    fn tsig_keygen_output() {
        let text = format!("key \"lifeboat-lab\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET_B64}\";\n}};\n");
        let k = TsigKey::parse(&text).unwrap();
        assert_eq!(k.name(), "lifeboat-lab");
        assert_eq!(k.algorithm(), "hmac-sha256");
        assert_eq!(k.secret(), B64.decode(SECRET_B64).unwrap().as_slice());
        assert!(!format!("{k:?}").contains(SECRET_B64));
    }

    #[test]
    fn layout_comments_and_case() {
        let text = format!(
            "# made by hand\n// another comment\n/* and\n a block */ KEY Shop.Example. {{ secret \"{SECRET_B64}\"; \
             algorithm \"HMAC-SHA512\"; }} ; // trailing\n"
        );
        let k = TsigKey::parse(&text).unwrap();
        assert_eq!(k.name(), "shop.example");
        assert_eq!(k.algorithm(), "hmac-sha512");
    }

    #[test]
    fn unknown_algorithm_parses_but_is_kept_verbatim() {
        let k = TsigKey::parse(&format!("key k {{ algorithm hmac-foo; secret \"{SECRET_B64}\"; }};")).unwrap();
        assert_eq!(k.algorithm(), "hmac-foo");
    }

    fn err(text: &str) -> KeyFileProblem {
        TsigKey::parse(text).unwrap_err()
    }

    #[test]
    fn malformed_files_say_where_and_never_quote_the_secret() {
        let cases: Vec<(String, usize, &str)> = vec![
            (String::new(), 0, "no key statement"),
            ("# only a comment\n".into(), 0, "no key statement"),
            (
                format!("key \"k\" {{\n algorithm hmac-sha256;\n secret \"{SECRET_B64}\";\n}}"),
                4,
                "`;` after",
            ),
            (
                format!("key \"k\" {{\n algorithm hmac-sha256;\n secret \"{SECRET_B64}\"\n}};"),
                4,
                "`;` after the secret",
            ),
            (
                format!("key \"k\" {{\n algorithm hmac-sha256;\n secret \"{SECRET_B64}\";\n"),
                3,
                "ends inside",
            ),
            (
                format!("key \"k\" {{\n secret \"{SECRET_B64}\";\n}};"),
                1,
                "no `algorithm`",
            ),
            ("key \"k\" {\n algorithm hmac-sha256;\n};".into(), 1, "no `secret`"),
            (
                "key \"k\" {\n algorithm hmac-sha256;\n secret \"not*base64!\";\n};".into(),
                3,
                "not valid base64",
            ),
            (
                "key \"k\" {\n algorithm hmac-sha256;\n secret \"\";\n};".into(),
                3,
                "empty",
            ),
            (
                format!("key \"k\" {{\n algorithm hmac-sha256;\n secret \"{SECRET_B64};\n}};"),
                3,
                "never closed",
            ),
            (
                format!("key \"k\" {{\n owner x;\n secret \"{SECRET_B64}\";\n}};"),
                2,
                "unknown clause",
            ),
            (
                format!("key \"\" {{ algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};"),
                1,
                "name is empty",
            ),
            (
                format!("key \"a b\" {{ algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};"),
                1,
                "not a DNS name",
            ),
            (
                format!("zone \"k\" {{ algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};"),
                1,
                "expected `key",
            ),
            (
                format!(
                    "key a {{ algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};\nkey b {{ algorithm hmac-sha256; \
                     secret \"{SECRET_B64}\"; }};"
                ),
                2,
                "exactly one key",
            ),
            (
                format!("key k {{ algorithm hmac-sha256; algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};"),
                1,
                "second `algorithm`",
            ),
            (
                format!("/* key k {{ algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};"),
                1,
                "never closed",
            ),
        ];
        for (text, line, want) in cases {
            let e = err(&text);
            assert!(e.reason.contains(want), "{text:?}: got {e}, want {want:?}");
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(!e.to_string().contains(SECRET_B64), "{e}");
            assert!(!e.to_string().contains("kQ2B"), "{e}");
        }
    }

    #[test]
    fn secret_in_a_wrong_place_is_not_echoed() {
        // The secret where the name, the algorithm or a clause should be.
        for text in [
            format!("key {{ algorithm hmac-sha256; secret \"{SECRET_B64}\"; }};"),
            format!("key k {{ algorithm \"{SECRET_B64}\"; }};"),
            format!("key k {{ \"{SECRET_B64}\"; }};"),
            format!("key k {{ algorithm hmac-sha256; secret {SECRET_B64} extra; }};"),
            SECRET_B64.to_string(),
        ] {
            let e = err(&text);
            assert!(!e.to_string().contains("kQ2B"), "{text}: {e}");
        }
    }

    proptest::proptest! {
        /// Whatever the input, the parser returns (no panic), and an error never repeats a run of
        /// the input's characters long enough to be part of a secret.
        #[test]
        fn any_text(text in "[ -~\n]{0,200}") {
            if let Err(e) = TsigKey::parse(&text) {
                for w in text.split(|c: char| !c.is_ascii_alphanumeric() && c != '+' && c != '/' && c != '=') {
                    if w.len() >= 12 {
                        proptest::prop_assert!(!e.reason.contains(w), "{} in {}", w, e.reason);
                    }
                }
            }
        }
    }
}
