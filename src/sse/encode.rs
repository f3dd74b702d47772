//! The SSE wire format (WHATWG HTML, "Server-sent events"), byte for byte.
//!
//! A frame is `id:`, optional `event:`, then one `data:` line per line of the data, split on
//! every line ending the spec knows (CRLF, LF, CR) so no stray CR reaches the client, then a
//! blank line. Field values in `id` and `event` cannot hold line breaks; they are replaced
//! by spaces rather than letting a template inject fields.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// A comment line: keeps proxies and load balancers from closing an idle stream, and costs
/// the client nothing (comments are ignored).
pub const HEARTBEAT: Bytes = Bytes::from_static(b":\n\n");

/// Encode one event.
pub fn event(id: &str, event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + id.len() + 32);
    fields(&mut out, id, event);
    for line in lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// One event as three chunks, so a large single-line `data` (a watched JSON body) is sent
/// from the bytes it already lives in rather than copied: the fields up to `data: `, `data`
/// itself, and the end. `None` when `data` has a line break: use [`event`], which splits it.
pub fn event_sharing(id: &str, event: Option<&str>, data: Bytes) -> Option<[Bytes; 3]> {
    if data.contains(&b'\n') || data.contains(&b'\r') {
        return None;
    }
    let mut head = BytesMut::with_capacity(id.len() + 32);
    fields(&mut head, id, event);
    head.put_slice(b"data: ");
    Some([head.freeze(), data, Bytes::from_static(b"\n\n")])
}

fn fields(out: &mut BytesMut, id: &str, event: Option<&str>) {
    field(out, "id", id);
    if let Some(name) = event {
        field(out, "event", name);
    }
}

/// The `retry:` hint sent first on every stream: how long the browser waits before
/// reconnecting after the stream ends.
pub fn retry(after: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", after.as_millis()))
}

/// A single-line field; line breaks inside the value become spaces.
fn field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    for (i, part) in value.split(['\r', '\n']).enumerate() {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(part.as_bytes());
    }
    out.put_u8(b'\n');
}

/// Split on CRLF, LF or CR, keeping empty lines (a trailing newline is a trailing empty
/// line, which the client turns back into the newline).
fn lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(text)
            }
            Some(i) => {
                let skip = if text[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[i + skip..]);
                Some(&text[..i])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn a_shared_event_is_the_same_bytes_as_an_encoded_one() {
        let data = Bytes::from_static(br#"{"a":[1,2]}"#);
        let parts = event_sharing("v1", Some("update"), data.clone()).unwrap();
        assert_eq!(parts[1].as_ptr(), data.as_ptr(), "the data is not copied");
        assert_eq!(
            parts.concat(),
            event("v1", Some("update"), r#"{"a":[1,2]}"#).to_vec()
        );
        assert!(event_sharing("v1", None, Bytes::from_static(b"a\nb")).is_none());
        assert!(event_sharing("v1", None, Bytes::from_static(b"a\rb")).is_none());
    }

    #[test]
    fn single_line_event() {
        assert_eq!(
            text(event("ab-1", Some("new_message"), r#"{"a":1}"#)),
            "id: ab-1\nevent: new_message\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(text(event("ab-2", None, "x")), "id: ab-2\ndata: x\n\n");
    }

    #[test]
    fn every_line_ending_splits_and_no_cr_survives() {
        let frame = text(event("i", None, "a\r\nb\nc\rd\r\n\r\ne"));
        assert_eq!(
            frame,
            "id: i\ndata: a\ndata: b\ndata: c\ndata: d\ndata: \ndata: e\n\n"
        );
        assert!(!frame.contains('\r'));
    }

    #[test]
    fn trailing_and_leading_newlines_and_empty_data() {
        assert_eq!(text(event("i", None, "a\n")), "id: i\ndata: a\ndata: \n\n");
        assert_eq!(text(event("i", None, "\na")), "id: i\ndata: \ndata: a\n\n");
        assert_eq!(text(event("i", None, "")), "id: i\ndata: \n\n");
        // A lone CR at the end is a line ending too.
        assert_eq!(text(event("i", None, "a\r")), "id: i\ndata: a\ndata: \n\n");
    }

    #[test]
    fn leading_space_in_data_survives_the_one_stripped_space() {
        assert_eq!(text(event("i", None, " x")), "id: i\ndata:  x\n\n");
    }

    #[test]
    fn unicode_is_passed_through_as_utf8() {
        let data = "héllo 🌍\nпривет";
        let frame = event("i", Some("ünï"), data);
        assert_eq!(
            &frame[..],
            "id: i\nevent: ünï\ndata: héllo 🌍\ndata: привет\n\n".as_bytes()
        );
    }

    #[test]
    fn line_breaks_in_id_and_event_cannot_inject_fields() {
        assert_eq!(
            text(event("a\nb", Some("x\r\ndata: evil"), "d")),
            "id: a b\nevent: x  data: evil\ndata: d\n\n"
        );
    }

    #[test]
    fn large_data_is_encoded_whole() {
        let line = "x".repeat(1000);
        let data = vec![line.as_str(); 2000].join("\n");
        let frame = event("i", None, &data);
        let expected_len = "id: i\n".len() + 2000 * ("data: ".len() + 1000 + 1) + 1;
        assert_eq!(frame.len(), expected_len);
        assert!(frame.ends_with(b"x\n\n"));
        assert_eq!(
            text(frame).matches("data: ").count(),
            2000,
            "one data field per line"
        );
    }

    #[test]
    fn retry_and_heartbeat() {
        assert_eq!(text(retry(Duration::from_secs(3))), "retry: 3000\n\n");
        assert_eq!(&HEARTBEAT[..], b":\n\n");
    }
}

/// Issue 10 item 11: whatever a publisher sends, the frame is read by a browser as exactly
/// one event with the same data (line endings normalized to LF, as SSE always does), name
/// and id. The parser below follows the WHATWG "Server-sent events" parsing rules step by
/// step rather than trusting a client library's reading of them.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One dispatched event: `(last event id, type, data)`.
    type Parsed = (String, String, String);

    /// WHATWG HTML §9.2.6 "Interpreting an event stream", for a complete stream.
    fn parse(stream: &str) -> Vec<Parsed> {
        let stream = stream.strip_prefix('\u{feff}').unwrap_or(stream);
        let (mut data, mut kind, mut last_id) = (String::new(), String::new(), String::new());
        let mut events = Vec::new();
        let mut rest = stream;
        // Lines end with CRLF, a lone LF or a lone CR; text after the last end is not a line.
        while let Some(i) = rest.find(['\r', '\n']) {
            let line = &rest[..i];
            rest = &rest[i + if rest[i..].starts_with("\r\n") { 2 } else { 1 }..];
            if line.is_empty() {
                // Dispatch.
                if data.is_empty() {
                    kind.clear();
                    continue;
                }
                if data.ends_with('\n') {
                    data.pop();
                }
                let name = if kind.is_empty() { "message" } else { &kind };
                events.push((last_id.clone(), name.to_owned(), std::mem::take(&mut data)));
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(c) => {
                    let value = &line[c + 1..];
                    (&line[..c], value.strip_prefix(' ').unwrap_or(value))
                }
                None => (line, ""),
            };
            match field {
                "event" => kind = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => last_id = value.to_owned(),
                _ => {}
            }
        }
        events
    }

    /// Text with every hazard of the format: each line ending, empty lines, leading spaces,
    /// colons, field-looking text, and arbitrary Unicode.
    fn hostile_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\n\n".to_owned()),
            Just(" ".to_owned()),
            Just(":".to_owned()),
            Just("data: x".to_owned()),
            Just("id: 9".to_owned()),
            Just("event".to_owned()),
            Just("\u{feff}".to_owned()),
            any::<char>().prop_map(String::from),
            "[a-zé🌍]{0,4}".prop_map(|s| s),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
    }

    /// Data as the client sees it: every CRLF, CR and LF becomes LF.
    fn normalized(data: &str) -> String {
        data.replace("\r\n", "\n").replace('\r', "\n")
    }

    /// A single-line field as sent: line breaks become spaces.
    fn flattened(value: &str) -> String {
        value.replace(['\r', '\n'], " ")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_event_round_trips_as_exactly_one_event(
            // Ids are the hub's `<boot>-<seq>`; any text without NUL (which the spec makes
            // a client ignore) must still survive.
            id in hostile_text().prop_filter("no NUL", |s| !s.contains('\0')),
            name in proptest::option::of(hostile_text()),
            data in hostile_text(),
            next in hostile_text(),
        ) {
            let frame = event(&id, name.as_deref(), &data);
            let kind = match name.as_deref().map(flattened) {
                Some(n) if !n.is_empty() => n,
                _ => "message".to_owned(),
            };
            let first = (flattened(&id), kind, normalized(&data));
            prop_assert_eq!(parse(std::str::from_utf8(&frame).unwrap()), vec![first.clone()]);
            // The frame ends the event: what follows on the stream is a separate event.
            let mut stream = frame.to_vec();
            stream.extend_from_slice(&HEARTBEAT);
            stream.extend_from_slice(&event("n-2", None, &next));
            let second = ("n-2".to_owned(), "message".to_owned(), normalized(&next));
            prop_assert_eq!(
                parse(std::str::from_utf8(&stream).unwrap()),
                vec![first, second]
            );
        }
    }
}
