//! nginx's config syntax: tokens, directives and blocks, with `include` followed (globs, relative to the
//! including file's directory) — the tree `nginx -t` would read, without knowing what any directive means.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a directive was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: Arc<Path>,
    /// 1-based line of the directive's name.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One directive: `name args;` or `name args { children }`.
#[derive(Debug, Clone)]
pub struct Directive {
    /// The directive's name.
    pub name: String,
    /// Its arguments, unquoted.
    pub args: Vec<String>,
    /// Where it is.
    pub origin: Origin,
    /// The block's directives, for a block directive.
    pub block: Option<Vec<Directive>>,
}

/// Input that is not nginx syntax (or an include that cannot be read), with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {why}", file = .file.display())]
pub struct SyntaxError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong, in nginx's words where it has some.
    pub why: String,
}

/// Block directives a config may hold; their contents are parsed like any other.
const BLOCKS: [&str; 16] = [
    "events",
    "http",
    "server",
    "location",
    "upstream",
    "if",
    "map",
    "types",
    "geo",
    "split_clients",
    "limit_except",
    "stream",
    "mail",
    "match",
    "charset_map",
    "perl_set",
];

/// Includes nested deeper than this are refused (a file including itself).
const MAX_INCLUDE_DEPTH: usize = 32;

/// Reads `path` and every file it includes.
pub fn parse_file(path: &Path) -> Result<Vec<Directive>, SyntaxError> {
    parse_path(path, 0, None)
}

fn parse_path(
    path: &Path,
    depth: usize,
    from: Option<&Origin>,
) -> Result<Vec<Directive>, SyntaxError> {
    let text = std::fs::read(path).map_err(|e| SyntaxError {
        file: from.map_or_else(|| path.to_path_buf(), |o| o.file.to_path_buf()),
        line: from.map_or(0, |o| o.line),
        why: format!("open() \"{}\" failed ({e})", path.display()),
    })?;
    let text = String::from_utf8_lossy(&text);
    parse_text(&text, path, depth)
}

/// Parses config `text` as the file `path` (includes are read relative to its directory).
pub fn parse_text(text: &str, path: &Path, depth: usize) -> Result<Vec<Directive>, SyntaxError> {
    let file: Arc<Path> = Arc::from(path);
    let tokens = tokenize(text, &file)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        file: Arc::clone(&file),
        // nginx names the line it reached at the end of the file: one past a final newline.
        last_line: text.matches('\n').count() + 1,
        depth,
    };
    parser.block(false)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Semicolon,
    Open,
    Close,
}

fn tokenize(text: &str, file: &Arc<Path>) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let error = |line: usize, why: String| SyntaxError {
        file: file.to_path_buf(),
        line,
        why,
    };
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ';' => {
                tokens.push((Token::Semicolon, line));
                chars.next();
            }
            '{' => {
                tokens.push((Token::Open, line));
                chars.next();
            }
            '}' => {
                tokens.push((Token::Close, line));
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                let start = line;
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(error(
                                start,
                                "unexpected end of file, expecting closing quote".into(),
                            ))
                        }
                        Some('\\') => match chars.next() {
                            Some(escaped) if escaped == quote || escaped == '\\' => {
                                word.push(escaped)
                            }
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(other) => {
                                if other == '\n' {
                                    line += 1;
                                }
                                word.push('\\');
                                word.push(other);
                            }
                            None => {
                                return Err(error(
                                    start,
                                    "unexpected end of file, expecting closing quote".into(),
                                ))
                            }
                        },
                        Some(ch) if ch == quote => break,
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            word.push(ch);
                        }
                    }
                }
                // nginx wants a separator after a quoted string: `"a"b` is an error.
                if chars
                    .peek()
                    .is_some_and(|&c| !(c.is_whitespace() || c == ';' || c == '{' || c == '}'))
                {
                    return Err(error(
                        line,
                        format!("unexpected \"{}\"", chars.peek().copied().unwrap_or(' ')),
                    ));
                }
                tokens.push((Token::Word(word), start));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == ';' || ch == '{' || ch == '}' {
                        break;
                    }
                    if ch == '\\' {
                        chars.next();
                        if let Some(next) = chars.next() {
                            word.push(next);
                        }
                        continue;
                    }
                    // `${name}` may hold braces that are not blocks.
                    if ch == '$' {
                        word.push(ch);
                        chars.next();
                        if chars.peek() == Some(&'{') {
                            for inner in chars.by_ref() {
                                word.push(inner);
                                if inner == '}' {
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    word.push(ch);
                    chars.next();
                }
                tokens.push((Token::Word(word), line));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    file: Arc<Path>,
    last_line: usize,
    depth: usize,
}

impl Parser {
    fn error(&self, line: usize, why: impl Into<String>) -> SyntaxError {
        SyntaxError {
            file: self.file.to_path_buf(),
            line,
            why: why.into(),
        }
    }

    /// Directives up to the end of the file (`nested` false) or the `}` closing a block.
    fn block(&mut self, nested: bool) -> Result<Vec<Directive>, SyntaxError> {
        let mut out = Vec::new();
        loop {
            let Some((token, line)) = self.tokens.get(self.at).cloned() else {
                if nested {
                    return Err(
                        self.error(self.last_line, "unexpected end of file, expecting \"}\"")
                    );
                }
                return Ok(out);
            };
            self.at += 1;
            let name = match token {
                Token::Close if nested => return Ok(out),
                Token::Close => return Err(self.error(line, "unexpected \"}\"")),
                Token::Semicolon => return Err(self.error(line, "unexpected \";\"")),
                Token::Open => return Err(self.error(line, "unexpected \"{\"")),
                Token::Word(name) => name,
            };
            let mut args = Vec::new();
            loop {
                let Some((token, at)) = self.tokens.get(self.at).cloned() else {
                    return Err(self.error(
                        self.last_line,
                        "unexpected end of file, expecting \";\" or \"}\"",
                    ));
                };
                self.at += 1;
                match token {
                    Token::Word(word) => args.push(word),
                    Token::Semicolon => {
                        // `server` is also an `upstream` line; every other block name needs its `{`.
                        if BLOCKS.contains(&name.as_str()) && name != "server" {
                            return Err(self.error(
                                line,
                                format!("directive \"{name}\" has no opening \"{{\""),
                            ));
                        }
                        let origin = Origin {
                            file: Arc::clone(&self.file),
                            line,
                        };
                        if name == "include" {
                            out.extend(self.include(&args, &origin)?);
                        } else {
                            out.push(Directive {
                                name,
                                args,
                                origin,
                                block: None,
                            });
                        }
                        break;
                    }
                    Token::Open => {
                        if !BLOCKS.contains(&name.as_str()) {
                            return Err(self.error(
                                line,
                                format!("unknown block directive \"{name}\" (or a missing \";\" before \"{{\")"),
                            ));
                        }
                        let children = self.block(true)?;
                        out.push(Directive {
                            name,
                            args,
                            origin: Origin {
                                file: Arc::clone(&self.file),
                                line,
                            },
                            block: Some(children),
                        });
                        break;
                    }
                    Token::Close => {
                        // `a b }`: the `;` after `a b` is missing (nginx: unexpected "}").
                        return Err(
                            self.error(at, "unexpected \"}\" (a \";\" is missing before it)")
                        );
                    }
                }
            }
        }
    }

    /// The directives of the files an `include` names, in nginx's order (sorted, as glob returns them).
    fn include(&self, args: &[String], origin: &Origin) -> Result<Vec<Directive>, SyntaxError> {
        let [pattern] = args else {
            return Err(self.error(
                origin.line,
                "invalid number of arguments in \"include\" directive",
            ));
        };
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(self.error(
                origin.line,
                "includes nested too deep (a file includes itself?)",
            ));
        }
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let full = dir.join(pattern);
        let full_text = full.to_string_lossy();
        let mut out = Vec::new();
        if pattern.contains(['*', '?', '[']) {
            let paths = glob::glob(&full_text).map_err(|e| {
                self.error(
                    origin.line,
                    format!("invalid include pattern \"{pattern}\": {e}"),
                )
            })?;
            for path in paths {
                let path = path.map_err(|e| self.error(origin.line, e.to_string()))?;
                if path.is_file() {
                    out.extend(parse_path(&path, self.depth + 1, Some(origin))?);
                }
            }
        } else {
            out.extend(parse_path(&full, self.depth + 1, Some(origin))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Directive>, SyntaxError> {
        parse_text(text, Path::new("t.conf"), 0)
    }

    #[test]
    fn directives_blocks_quotes_and_comments() {
        let tree =
            parse("# top\nhttp {\n  server { listen 80; # c\n    return 200 \"a; {b}\";\n  }\n}\n")
                .expect("valid");
        let http = &tree[0];
        assert_eq!(http.name, "http");
        let server = &http.block.as_ref().expect("block")[0];
        let inner = server.block.as_ref().expect("block");
        assert_eq!(inner[0].args, ["80"]);
        assert_eq!(inner[1].args, ["200", "a; {b}"]);
        assert_eq!(inner[1].origin.line, 4);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("http {\n  server {\n", 3, "expecting \"}\""),
            ("http {\n}\n}\n", 3, "unexpected \"}\""),
            ("http {\n  listen 80\n}\n", 3, "\";\" is missing"),
            ("foo {\n}\n", 1, "unknown block directive \"foo\""),
            ("listen 80", 1, "expecting \";\" or \"}\""),
            ("return 200 \"x\n", 1, "closing quote"),
        ];
        for (text, line, why) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.line, line, "{text}: {error}");
            assert!(error.why.contains(why), "{text}: {error}");
        }
    }
}
