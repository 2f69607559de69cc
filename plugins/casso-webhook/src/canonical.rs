//! The canonical JSON Casso signs.
//!
//! Casso does not sign the bytes it sends: it signs `JSON.stringify` of the
//! body with the keys of every object sorted (its official sample code does
//! exactly that). So the raw body is re-written here: no whitespace, object
//! keys sorted, strings re-escaped the way `JSON.stringify` escapes them,
//! and numbers copied **as written** (re-formatting them, e.g. `1.50` →
//! `1.5` or `100` → `100.0`, would break the signature whatever serialiser
//! Casso uses, since its body and its signed string come from the same one).
//!
//! A small hand-written parser rather than `serde_json::Value`: `Value` loses
//! the text of numbers and, if any crate in the build turns serde_json's
//! `preserve_order` on, its key order too.

/// How characters outside ASCII are written in the signed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonAscii {
    /// As raw UTF-8, like `JSON.stringify` (reproduces Casso's official vector).
    Raw,
    /// As `\uXXXX` (lower-case hex, UTF-16 surrogate pairs), like Python's
    /// `json.dumps` with its default `ensure_ascii=True`.
    Escape,
}

/// One way of writing the canonical JSON's strings. Casso does not publish
/// which its server uses, and the official samples in
/// `CassoHQ/casso-webhook-v2-verify-signature` would each sign another one:
///
/// | sample | non-ASCII | `/` | `& < >` |
/// |---|---|---|---|
/// | `javascript.js` (`JSON.stringify`), `java.java` (Jackson), `dotnet.cs` (Newtonsoft) | raw | `/` | raw |
/// | `python.py` (`json.dumps`) | `\uXXXX` | `/` | raw |
/// | `php.php` (`json_encode`) | `\uXXXX` | `\/` | raw |
/// | `golang.go` (`json.Marshal`) | raw | `/` | `\u0026 \u003c \u003e` |
///
/// The three choices are independent, so all 8 combinations are tried
/// (only those that differ for the body at hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    pub non_ascii: NonAscii,
    /// `/` as `\/` (PHP's default).
    pub escape_slash: bool,
    /// `&`, `<`, `>`, U+2028 and U+2029 as `\u0026`-style escapes (Go's default).
    pub escape_html: bool,
}

impl Dialect {
    /// `JSON.stringify`'s: nothing escaped beyond what JSON requires.
    pub const PLAIN: Dialect = Dialect {
        non_ascii: NonAscii::Raw,
        escape_slash: false,
        escape_html: false,
    };
}

impl From<NonAscii> for Dialect {
    fn from(non_ascii: NonAscii) -> Dialect {
        Dialect {
            non_ascii,
            ..Dialect::PLAIN
        }
    }
}

/// Deeper nesting than this is not a Casso webhook; the limit keeps a
/// hostile body from exhausting the sandbox's stack.
const MAX_DEPTH: usize = 32;

/// The canonical form of `body`, or why it is not JSON.
pub fn canonical_json(body: &[u8], dialect: Dialect) -> Result<String, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    let mut parser = Parser {
        text,
        pos: 0,
        dialect,
    };
    let mut out = String::with_capacity(text.len());
    parser.skip_ws();
    parser.value(&mut out, 0)?;
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(format!("unexpected text at byte {}", parser.pos));
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    dialect: Dialect,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", byte as char, self.pos))
        }
    }

    fn value(&mut self, out: &mut String, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply".into());
        }
        match self.peek() {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => self.array(out, depth),
            Some(b'"') => {
                let s = self.string()?;
                write_string(out, &s, self.dialect);
                Ok(())
            }
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            Some(_) => Err(format!("unexpected character at byte {}", self.pos)),
            None => Err("unexpected end of JSON".into()),
        }
    }

    fn object(&mut self, out: &mut String, depth: usize) -> Result<(), String> {
        self.expect(b'{')?;
        let mut members: Vec<(String, String)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                let key = self.string()?;
                self.skip_ws();
                self.expect(b':')?;
                self.skip_ws();
                let mut value = String::new();
                self.value(&mut value, depth + 1)?;
                members.push((key, value));
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(format!("expected `,` or `}}` at byte {}", self.pos)),
                }
            }
        }
        // JavaScript's default sort compares UTF-16 code units; for the ASCII
        // keys Casso uses this is plain byte order.
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
        if members.windows(2).any(|w| w[0].0 == w[1].0) {
            // Which duplicate the signer kept is anyone's guess: refuse.
            return Err("duplicate key in a JSON object".into());
        }
        out.push('{');
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, key, self.dialect);
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        Ok(())
    }

    fn array(&mut self, out: &mut String, depth: usize) -> Result<(), String> {
        self.expect(b'[')?;
        out.push('[');
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            let mut first = true;
            loop {
                if !first {
                    out.push(',');
                }
                first = false;
                self.skip_ws();
                self.value(out, depth + 1)?;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(format!("expected `,` or `]` at byte {}", self.pos)),
                }
            }
        }
        out.push(']');
        Ok(())
    }

    /// A string token, decoded (serde_json does the unescaping and rejects
    /// raw control characters and lone surrogates).
    fn string(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.expect(b'"')?;
        let bytes = self.text.as_bytes();
        loop {
            match bytes.get(self.pos) {
                Some(b'"') => break,
                Some(b'\\') => self.pos += 2,
                Some(_) => self.pos += 1,
                None => return Err("unterminated string".into()),
            }
        }
        self.pos += 1;
        let token = self
            .text
            .get(start..self.pos)
            .ok_or_else(|| "unterminated string".to_string())?;
        serde_json::from_str(token).map_err(|e| format!("bad string at byte {start}: {e}"))
    }

    /// A number token, copied as written once its grammar is checked.
    fn number(&mut self, out: &mut String) -> Result<(), String> {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        match serde_json::from_str::<serde_json::Value>(token) {
            Ok(serde_json::Value::Number(_)) => {
                out.push_str(token);
                Ok(())
            }
            _ => Err(format!("bad number `{token}` at byte {start}")),
        }
    }

    fn literal(&mut self, out: &mut String, word: &str) -> Result<(), String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            out.push_str(word);
            Ok(())
        } else {
            Err(format!("unexpected character at byte {}", self.pos))
        }
    }
}

/// Writes `s` as a JSON string: `"` and `\` escaped, `\b \f \n \r \t` short,
/// other control characters as `\u00xx`, the rest per `dialect`.
fn write_string(out: &mut String, s: &str, dialect: Dialect) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '/' if dialect.escape_slash => out.push_str("\\/"),
            '&' | '<' | '>' | '\u{2028}' | '\u{2029}' if dialect.escape_html => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            // Python's ensure_ascii escapes everything outside ' '..='~', DEL included.
            c if dialect.non_ascii == NonAscii::Escape && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(body: &str) -> Result<String, String> {
        canonical_json(body.as_bytes(), Dialect::PLAIN)
    }

    #[test]
    fn sorts_keys_at_every_level_and_drops_whitespace() {
        let body = "{ \"b\": 1,\n \"a\": {\"z\": [ {\"y\":2, \"x\":1} ], \"c\": null} }";
        assert_eq!(
            raw(body).unwrap(),
            r#"{"a":{"c":null,"z":[{"x":1,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn numbers_are_kept_as_written() {
        let body = r#"{"a":-16775000,"b":1.50,"c":1e21,"d":0,"e":100.0}"#;
        assert_eq!(raw(body).unwrap(), body);
    }

    #[test]
    fn strings_are_re_escaped_like_json_stringify() {
        // `\/` and `\u0041` are only spellings; control characters stay escaped.
        let body = r#"{"s":"a\/b\u0041 \"q\" \\ \n\t\u0001 đồng ✓"}"#;
        assert_eq!(
            raw(body).unwrap(),
            r#"{"s":"a/bA \"q\" \\ \n\t\u0001 đồng ✓"}"#
        );
        // Python's ensure_ascii: json.dumps({"s": "đồng 😀\x7f"}, separators=(",", ":"))
        let body = "{\"s\":\"đồng 😀\u{7f}\"}";
        assert_eq!(
            canonical_json(body.as_bytes(), NonAscii::Escape.into()).unwrap(),
            r#"{"s":"\u0111\u1ed3ng \ud83d\ude00\u007f"}"#
        );
    }

    #[test]
    fn php_and_go_escapes() {
        let body = r#"{"s":"a/b & <c> đ\u2028"}"#;
        let php = Dialect {
            non_ascii: NonAscii::Escape,
            escape_slash: true,
            escape_html: false,
        };
        assert_eq!(
            canonical_json(body.as_bytes(), php).unwrap(),
            r#"{"s":"a\/b & <c> \u0111\u2028"}"#
        );
        let go = Dialect {
            escape_html: true,
            ..Dialect::PLAIN
        };
        assert_eq!(
            canonical_json(body.as_bytes(), go).unwrap(),
            r#"{"s":"a/b \u0026 \u003cc\u003e đ\u2028"}"#
        );
    }

    #[test]
    fn rejects_what_is_not_json() {
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":01x}",
            "{\"a\":tru}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":1}x",
            "{\"a\":1,\"a\":2}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"unterminated}",
            "[\"\\",
        ] {
            assert!(raw(bad).is_err(), "{bad:?}");
        }
        assert!(canonical_json(&[0xff, 0xfe], Dialect::PLAIN).is_err());
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(raw(&deep).is_err());
    }
}
