//! A direct reader for the JSON shape every producer we know sends: one flat
//! object whose values are strings without escapes, non-negative numbers,
//! `true`, `false` and `null`. Any other value (nested, negative, escaped) is
//! checked and skipped by serde_json and reported as [`FlatValue::Skipped`],
//! so a producer's extra fields of any kind keep the fast path; the caller
//! gives up on a swap field holding one. It answers `None` for text that is
//! not one JSON object, and the caller then hands the message to serde_json,
//! which accepts or rejects it with its message. A swap's decode went from
//! ~520 to ~380 ns with it (`cargo bench --bench engine -- decode/`), of the
//! shard's ~3 µs of CPU per swap.

/// One member's value, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FlatValue<'a> {
    /// A string's contents (it had no escapes, so they are its value).
    Text(&'a str),
    /// A JSON number with no sign, as its text: read it with `str::parse`.
    Number(&'a str),
    /// `true` or `false` (no swap field takes one; another field may hold one).
    Bool(bool),
    /// `null`.
    Null,
    /// Any other JSON value (an object, an array, a negative number, a string
    /// with escapes), valid by serde_json's reading and skipped unread: only
    /// a field serde ignores may hold one and keep the direct reading.
    Skipped,
}

/// Calls `member` with each key and value of the flat object `text`, in order.
/// `None` when `text` is not such an object (or not only one: nothing but
/// whitespace may follow it), or as soon as `member` answers `None`. Values
/// outside the plain shape come as [`FlatValue::Skipped`].
pub(super) fn read_flat_object<'a>(
    text: &'a str,
    mut member: impl FnMut(&'a str, FlatValue<'a>) -> Option<()>,
) -> Option<()> {
    let mut reader = Reader { text, at: 0 };
    reader.skip_space();
    reader.expect(b'{')?;
    reader.skip_space();
    if reader.peek() == Some(b'}') {
        reader.at += 1;
    } else {
        loop {
            reader.expect(b'"')?;
            let key = reader.string()?;
            reader.skip_space();
            reader.expect(b':')?;
            reader.skip_space();
            let start = reader.at;
            let value = match reader.value() {
                Some(value) => value,
                // Escapes, nesting or a minus sign (or not JSON).
                None => {
                    reader.at = start;
                    reader.skipped()?
                }
            };
            member(key, value)?;
            reader.skip_space();
            match reader.next()? {
                b',' => reader.skip_space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    reader.skip_space();
    (reader.at == text.len()).then_some(())
}

/// A position in the message.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    #[inline]
    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The rest of a string whose opening quote was read; `None` at an escape
    /// or a control character (the first needs decoding, the second is not JSON).
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        let end = next_special(self.text.as_bytes(), start)?;
        if self.text.as_bytes()[end] != b'"' {
            return None;
        }
        // Quotes are ASCII, so both ends are character boundaries.
        let contents = self.text.get(start..end)?;
        self.at = end + 1;
        Some(contents)
    }

    // Always inlined: with the skipping beside it, the compiler left it out
    // of line (a perf profile of `decode/`), and the flat shape took longer.
    #[inline(always)]
    fn value(&mut self) -> Option<FlatValue<'a>> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(FlatValue::Text)
            }
            b'0'..=b'9' => self.number().map(FlatValue::Number),
            b'n' => self.literal("null", FlatValue::Null),
            b't' => self.literal("true", FlatValue::Bool(true)),
            b'f' => self.literal("false", FlatValue::Bool(false)),
            _ => None,
        }
    }

    /// The value at the reader, read by serde_json exactly as it reads a
    /// field serde ignores (`IgnoredAny`: the same grammar and escape checks,
    /// and no nesting limit, its walk being iterative), then skipped; `None`
    /// when that reading fails.
    #[cold]
    #[inline(never)]
    fn skipped(&mut self) -> Option<FlatValue<'a>> {
        let rest = self.text.get(self.at..)?;
        let mut values =
            serde_json::Deserializer::from_str(rest).into_iter::<serde::de::IgnoredAny>();
        values.next()?.ok()?;
        self.at += values.byte_offset();
        Some(FlatValue::Skipped)
    }

    /// `value` if the text goes on with `word`.
    #[inline]
    fn literal(&mut self, word: &str, value: FlatValue<'a>) -> Option<FlatValue<'a>> {
        let rest = self.text.as_bytes().get(self.at..)?;
        rest.starts_with(word.as_bytes()).then(|| {
            self.at += word.len();
            value
        })
    }

    /// A number by JSON's grammar, without the minus sign:
    /// `(0 | [1-9][0-9]*) ('.' [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    #[inline]
    fn number(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at - from
        };
        let mut at = self.at;
        let whole = digits(&mut at);
        if whole == 0 || (whole > 1 && bytes[start] == b'0') {
            return None;
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if digits(&mut at) == 0 {
                return None;
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if digits(&mut at) == 0 {
                return None;
            }
        }
        self.at = at;
        self.text.get(start..at)
    }
}

/// Index of the first `"`, `\` or control character (below 0x20) at or
/// after `at`: what ends a string's plain run. Eight bytes at a time (the
/// byte-by-byte loop was most of this reader's time): a byte's high bit is set
/// in `hits` where it is one of them, exactly for the lowest such byte (a
/// subtraction borrows only past a byte that matched).
#[inline]
fn next_special(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = bytes.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().ok()?);
        let below = |v: u8| x.wrapping_sub(ONES * u64::from(v)) & !x & HIGHS;
        let equal = |v: u8| {
            let y = x ^ (ONES * u64::from(v));
            y.wrapping_sub(ONES) & !y & HIGHS
        };
        let hits = equal(b'"') | equal(b'\\') | below(0x20);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes.get(at..)?;
    let special = |&b: &u8| b == b'"' || b == b'\\' || b < 0x20;
    rest.iter().position(special).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Option<Vec<(&str, FlatValue<'_>)>> {
        let mut seen = Vec::new();
        read_flat_object(text, |key, value| {
            seen.push((key, value));
            Some(())
        })?;
        Some(seen)
    }

    #[test]
    fn reads_flat_objects() {
        use FlatValue::*;
        assert_eq!(
            members(r#" { "a" : "x y" ,"b":12.5e-3, "c":null,"":0, "t":true,"f" :false} "#),
            Some(vec![
                ("a", Text("x y")),
                ("b", Number("12.5e-3")),
                ("c", Null),
                ("", Number("0")),
                ("t", Bool(true)),
                ("f", Bool(false)),
            ])
        );
        assert_eq!(members("{}"), Some(vec![]));
        assert_eq!(members("\t{\r\n}\n"), Some(vec![]));
        assert_eq!(
            members(r#"{"é":"ü","n":1E+7}"#),
            Some(vec![("é", Text("ü")), ("n", Number("1E+7"))])
        );
    }

    #[test]
    fn leaves_what_is_not_one_json_object_to_serde_json() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1}x"#,
            r#"{"a":1}{}"#,
            r#"{a:1}"#,
            r#"{"a\u0041":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":+1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":falsey}"#,
            r#"{"a":nul}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":[1}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"unterminated}"#,
            "\u{feff}{}",
        ] {
            assert_eq!(members(text), None, "{text}");
        }
    }

    #[test]
    fn skips_other_values_serde_json_reads() {
        use FlatValue::*;
        assert_eq!(
            members(r#"{"a":"b\"c", "n":-1.5e3 ,"l":[1,{"x":[]}],"o":{"p":"\u00e9"},"z":1}"#),
            Some(vec![
                ("a", Skipped),
                ("n", Skipped),
                ("l", Skipped),
                ("o", Skipped),
                ("z", Number("1")),
            ])
        );
        // Right before the object's end too.
        for last in [r#""b\"c""#, "-1", "[]", r#"{"p":[-0.5]}"#] {
            let text = format!(r#"{{"a":{last}}}"#);
            assert_eq!(members(&text), Some(vec![("a", Skipped)]), "{text}");
        }
        // Deep nesting too: serde_json walks an ignored value without recursion.
        let deep = format!(
            r#"{{"a":{}0{},"z":1}}"#,
            "[{\"b\":".repeat(500),
            "}]".repeat(500)
        );
        assert_eq!(
            members(&deep),
            Some(vec![("a", Skipped), ("z", Number("1"))])
        );
    }

    #[test]
    fn stops_when_the_member_callback_does() {
        let mut calls = 0;
        let read = read_flat_object(r#"{"a":1,"b":2}"#, |_, _| {
            calls += 1;
            None
        });
        assert_eq!((read, calls), (None, 1));
    }

    proptest::proptest! {
        /// The word-at-a-time search finds what a byte-by-byte one finds.
        #[test]
        fn next_special_finds_the_first_quote_backslash_or_control(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    24 => b'#'..=b'~',
                    8 => 0x80_u8..=0xff,
                    1 => proptest::num::u8::ANY,
                    1 => proptest::sample::select(vec![b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0xa0]),
                ],
                0..40,
            ),
            at in 0_usize..40,
        ) {
            let at = at.min(bytes.len());
            let naive = (at..bytes.len()).find(|&i| matches!(bytes[i], b'"' | b'\\' | 0..=0x1f));
            proptest::prop_assert_eq!(next_special(&bytes, at), naive);
        }
    }
}
