//! Guest text on the user's terminal. A console line, an agent's error or
//! a VM's last error is the guest's to write: an escape sequence in it
//! could move the cursor, retitle the window or rewrite what the user
//! reads. Control characters are shown escaped, except where the user
//! asked for the bytes (`vm logs --raw`, an exec's own output).

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character but newline and tab written as a
/// visible escape (`\x1b`, `\u{9b}`), so nothing in it reaches the
/// terminal as a command.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// C0 and C1 controls and DEL, the bidi overrides too (they reorder what
/// the user reads); newline and tab are text.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reach_the_terminal_only_as_text() {
        assert!(matches!(
            printable("plain text\n\tindented"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("\x1b]0;pwned\x07\x1b[2Jok\r"),
            "\\x1b]0;pwned\\x07\\x1b[2Jok\\x0d"
        );
        assert_eq!(printable("csi \u{9b}31m"), "csi \\u{9b}31m");
        assert_eq!(printable("del\x7f"), "del\\x7f");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(printable("ünïcødé ok"), "ünïcødé ok");
    }
}
