//! The text log's field formatter: tracing's own, with every control
//! character escaped.
//!
//! Field values come from webhook senders and plugins (transaction ids,
//! references, plugin log messages). tracing-subscriber escapes ANSI
//! sequences but not newlines, so a reference like `"x\n… INFO balance
//! change logged amount=99999999"` would print a second, forged log line.
//! Escaping at the formatter covers every call site, present and future; the
//! JSON format needs nothing (JSON strings escape control characters).

use std::fmt::{self, Write};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// [`DefaultFields`], then control and bidi-override characters escaped, so
/// one event stays one line that says what it says.
#[derive(Debug, Default)]
pub struct EscapedFields {
    inner: DefaultFields,
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut formatted = String::new();
        self.inner
            .format_fields(Writer::new(&mut formatted), fields)?;
        write_escaped(&mut writer, &formatted)
    }
}

/// Writes `text` with control characters as `\n`, `\r`, `\t` or `\u{…}`, and
/// the Unicode controls that reorder what a terminal shows (bidi overrides)
/// as `\u{…}`.
pub fn write_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() || is_bidi_control(c) => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Left-to-right/right-to-left marks, embeddings, overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// What the text log prints for one event carrying `value`.
    fn logged(value: &str) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("call", connector = %value);
            let _entered = span.enter();
            tracing::info!(transaction_id = %value, "balance change logged: {value}");
        });
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn a_sender_cannot_write_a_second_log_line() {
        let forged =
            "FT1\n2026-12-03T10:00:00Z  INFO balance change logged amount=99999999\x1b[2K\r";
        let out = logged(forged);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
        assert!(
            out.contains(
                r"FT1\n2026-12-03T10:00:00Z  INFO balance change logged amount=99999999\u{1b}[2K\r"
            ),
            "the value is still readable: {out}"
        );
    }

    #[test]
    fn bidi_overrides_and_c1_controls_are_escaped() {
        let out = logged("100\u{202e}000\u{9b}");
        assert!(out.contains(r"100\u{202e}000\u{9b}"), "{out}");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let out = logged("Nguyễn Văn A chuyển tiền");
        assert!(
            out.contains("transaction_id=Nguyễn Văn A chuyển tiền"),
            "{out}"
        );
    }
}
