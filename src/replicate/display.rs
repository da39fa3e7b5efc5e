//! Text that comes from tokens, made safe to print: labels and other
//! fields may hold control characters, which would move a terminal's
//! cursor, and bytes that are not UTF-8.

/// Escapes what a terminal would not show as written: invalid UTF-8 bytes
/// become `\xNN`, and control, format and other non-printable characters
/// get Rust's escapes (`\r`, `\u{202e}`). Backslashes are kept, so
/// escaping text twice changes nothing.
pub fn escape_nonprintable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            // escape_debug also escapes quotes and backslashes, which print
            // as they are.
            if matches!(c, '\\' | '"' | '\'') {
                out.push(c);
            } else {
                out.extend(c.escape_debug());
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_escaped() {
        let label = "EVIL\r  position 9: WLD_A, serial";
        assert_eq!(
            escape_nonprintable(label.as_bytes()),
            "EVIL\\r  position 9: WLD_A, serial"
        );
        assert_eq!(
            escape_nonprintable(b"a\x1b[2Jb\tc\n"),
            "a\\u{1b}[2Jb\\tc\\n"
        );
        assert_eq!(escape_nonprintable("x\u{202e}y".as_bytes()), "x\\u{202e}y");
    }

    #[test]
    fn invalid_utf8_escaped() {
        let mut label = vec![b'A'; 31];
        label.push(0xE2);
        assert_eq!(
            escape_nonprintable(&label),
            format!("{}\\xe2", "A".repeat(31))
        );
    }

    #[test]
    fn printable_text_kept() {
        for text in ["WLD_Slot_11", "clé \"x\" d'a", "a\\xe2", "日本語"] {
            assert_eq!(escape_nonprintable(text.as_bytes()), text);
        }
        let once = escape_nonprintable(b"a\rb\xff");
        assert_eq!(escape_nonprintable(once.as_bytes()), once);
    }
}
