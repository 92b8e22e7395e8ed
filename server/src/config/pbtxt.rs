//! A reader for protobuf text format, as Triton's `config.pbtxt` files use it.
//! It parses into a generic tree (field names, scalars, nested messages) so
//! the caller can map the fields it supports and report every other one,
//! rather than failing on, or silently dropping, what it does not know.

use std::fmt;

/// Deepest nesting of messages accepted. Triton's own configs nest about five
/// deep; the parser recurses per level, so an unbounded file could overflow
/// the stack and abort the whole process.
pub const MAX_DEPTH: usize = 32;

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number, enum name or boolean, as written.
    Scalar(String),
    /// A quoted string (escapes resolved; adjacent strings joined).
    Str(String),
    Message(Message),
}

/// A message: its fields in order; repeated fields appear once per value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub fields: Vec<(String, Value)>,
}

impl Message {
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn first(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Scalar(s) | Value::Str(s) => Some(s),
            Value::Message(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Scalar(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn as_message(&self) -> Option<&Message> {
        match self {
            Value::Message(m) => Some(m),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(String),
    Str(String),
    Punct(char),
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl Lexer<'_> {
    fn tokens(text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
        let mut lexer = Lexer {
            chars: text.chars().peekable(),
            line: 1,
        };
        let mut out = Vec::new();
        while let Some(token) = lexer.next_token()? {
            out.push((token, lexer.line));
        }
        Ok(out)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            message: message.into(),
        }
    }

    fn next_token(&mut self) -> Result<Option<Token>, ParseError> {
        loop {
            match self.chars.peek().copied() {
                None => return Ok(None),
                Some('\n') => {
                    self.line += 1;
                    self.chars.next();
                }
                Some(c) if c.is_whitespace() => {
                    self.chars.next();
                }
                Some('#') => {
                    while self.chars.peek().is_some_and(|&c| c != '\n') {
                        self.chars.next();
                    }
                }
                Some(quote @ ('"' | '\'')) => {
                    self.chars.next();
                    return self.string(quote).map(|s| Some(Token::Str(s)));
                }
                Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                    let mut number = String::new();
                    while let Some(&c) = self.chars.peek() {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+') {
                            number.push(c);
                            self.chars.next();
                        } else {
                            break;
                        }
                    }
                    return Ok(Some(Token::Number(number)));
                }
                Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                    let mut ident = String::new();
                    while let Some(&c) = self.chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                            ident.push(c);
                            self.chars.next();
                        } else {
                            break;
                        }
                    }
                    return Ok(Some(Token::Ident(ident)));
                }
                Some(c @ ('{' | '}' | '[' | ']' | '<' | '>' | ':' | ',' | ';')) => {
                    self.chars.next();
                    return Ok(Some(Token::Punct(c)));
                }
                Some(c) => return Err(self.error(format!("unexpected character {c:?}"))),
            }
        }
    }

    fn string(&mut self, quote: char) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None | Some('\n') => return Err(self.error("unterminated string")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                    other => {
                        return Err(
                            self.error(format!("unsupported escape \\{}", other.unwrap_or(' ')))
                        );
                    }
                },
                Some(c) => out.push(c),
            }
        }
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn line(&self) -> usize {
        self.tokens
            .get(self.pos)
            .or_else(|| self.tokens.last())
            .map_or(1, |(_, line)| *line)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line(),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).map(|(t, _)| t.clone());
        self.pos += 1;
        token
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn message(&mut self, close: Option<char>) -> Result<Message, ParseError> {
        let mut message = Message::default();
        loop {
            match (self.peek(), close) {
                (None, None) => return Ok(message),
                (None, Some(c)) => return Err(self.error(format!("missing `{c}`"))),
                (Some(Token::Punct(p)), Some(c)) if *p == c => {
                    self.pos += 1;
                    return Ok(message);
                }
                _ => {}
            }
            let name = match self.next() {
                Some(Token::Ident(name)) => name,
                other => return Err(self.error(format!("expected a field name, found {other:?}"))),
            };
            let colon = self.eat(':');
            if self.eat('[') {
                if !self.eat(']') {
                    loop {
                        let value = self.value()?;
                        message.fields.push((name.clone(), value));
                        if self.eat(']') {
                            break;
                        }
                        if !self.eat(',') {
                            return Err(
                                self.error(format!("expected `,` or `]` in the list of `{name}`"))
                            );
                        }
                    }
                }
            } else {
                let value = self.value()?;
                if !colon && !matches!(value, Value::Message(_)) {
                    return Err(self.error(format!("expected `:` after `{name}`")));
                }
                message.fields.push((name, value));
            }
            let _ = self.eat(',') || self.eat(';');
        }
    }

    fn nested(&mut self, close: char) -> Result<Value, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(format!("messages nest more than {MAX_DEPTH} levels deep")));
        }
        self.depth += 1;
        let message = self.message(Some(close));
        self.depth -= 1;
        Ok(Value::Message(message?))
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.next() {
            Some(Token::Punct('{')) => self.nested('}'),
            Some(Token::Punct('<')) => self.nested('>'),
            Some(Token::Str(mut s)) => {
                while let Some(Token::Str(next)) = self.peek() {
                    s.push_str(next);
                    self.pos += 1;
                }
                Ok(Value::Str(s))
            }
            Some(Token::Number(n)) => Ok(Value::Scalar(n)),
            Some(Token::Ident(i)) => Ok(Value::Scalar(i)),
            other => Err(self.error(format!("expected a value, found {other:?}"))),
        }
    }
}

/// Parses a whole text-format message (at most `MAX_DEPTH` levels deep; the
/// caller bounds the text's size, see `config_file::MAX_CONFIG_BYTES`).
pub fn parse(text: &str) -> Result<Message, ParseError> {
    let tokens = Lexer::tokens(text)?;
    Parser {
        tokens,
        pos: 0,
        depth: 0,
    }
    .message(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triton_config_parses() {
        let text = r#"
# A Triton model configuration.
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size : 8
input [
  {
    name: "input__0"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  }
]
output { name: 'out' data_type: TYPE_FP32 dims: [ 1000 ] }
instance_group [ { count: 2, kind: KIND_CPU } ]
version_policy: { specific: { versions: [1, 3] } }
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
parameters { key: "a" value: { string_value: "x" "y" } }
"#;
        let m = parse(text).unwrap();
        assert_eq!(m.first("name"), Some(&Value::Str("resnet".into())));
        assert_eq!(m.first("max_batch_size").and_then(Value::as_i64), Some(8));
        let input = m.first("input").and_then(Value::as_message).unwrap();
        assert_eq!(
            input.first("data_type").and_then(Value::as_text),
            Some("TYPE_FP32")
        );
        let dims: Vec<i64> = input.all("dims").filter_map(Value::as_i64).collect();
        assert_eq!(dims, vec![3, 224, 224]);
        assert_eq!(m.all("output").count(), 1);
        let group = m
            .first("instance_group")
            .and_then(Value::as_message)
            .unwrap();
        assert_eq!(group.first("count").and_then(Value::as_i64), Some(2));
        let policy = m
            .first("version_policy")
            .and_then(Value::as_message)
            .unwrap();
        let specific = policy
            .first("specific")
            .and_then(Value::as_message)
            .unwrap();
        assert_eq!(
            specific
                .all("versions")
                .filter_map(Value::as_i64)
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
        let params = m.first("parameters").and_then(Value::as_message).unwrap();
        let value = params.first("value").and_then(Value::as_message).unwrap();
        assert_eq!(value.first("string_value"), Some(&Value::Str("xy".into())));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("name: \"x\"\nmax_batch_size 8\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("expected `:`"), "{err}");
        assert!(
            parse("input { name: \"x\"")
                .unwrap_err()
                .message
                .contains("missing `}`")
        );
        assert!(parse("name: \"oops\n\"").is_err());
        assert!(parse("dims: [1 2]").is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep =
            |levels: usize| format!("{}{}", "parameters { ".repeat(levels), "}".repeat(levels));
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        for levels in [MAX_DEPTH + 1, 200_000] {
            let err = parse(&deep(levels)).unwrap_err();
            assert!(err.message.contains("nest more than 32"), "{err}");
        }
        let angle = format!("{}{}", "a < ".repeat(100_000), ">".repeat(100_000));
        assert!(parse(&angle).is_err());
    }
}
