//! RESP framing: cuts client commands out of a connection's read buffer and encodes
//! replies. A command is a multibulk array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`,
//! what every client library sends) or an inline line (`GET k\r\n`, what telnet sends).
//! Replies are encoded in RESP2 or RESP3 (after `HELLO 3`).
//!
//! Owns: the limits a frame must respect (argument count, bulk length, inline length,
//! total command size), checked from the headers before the data arrives, so a hostile
//! length never makes the node buffer it. Must not: do I/O or know what commands mean.

use bytes::{BufMut, Bytes, BytesMut};

/// What one command frame may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Arguments in one command, the command name included.
    pub max_args: usize,
    /// Bytes in one bulk string (a key or a value).
    pub max_bulk: usize,
    /// Bytes in one inline command line.
    pub max_inline: usize,
    /// Bytes of one whole command frame, headers included.
    pub max_command: usize,
}

/// Digits a `*` or `$` header may have: enough for any length this parser accepts.
const MAX_HEADER_DIGITS: usize = 20;

/// A frame that cannot be parsed. The connection answers `-ERR Protocol error: ...` and
/// closes: after a bad header the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    MultibulkLength,
    #[error("{count} arguments in one command, over the limit of {max}")]
    TooManyArguments { count: usize, max: usize },
    #[error("invalid bulk length")]
    BulkLength,
    #[error("bulk length {len} is over the limit of {max} bytes (--max-value)")]
    BulkTooLong { len: u64, max: usize },
    #[error("the command would be over the limit of {max} bytes")]
    CommandTooLong { max: usize },
    #[error("expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("a bulk string is not followed by CRLF")]
    MissingCrlf,
    #[error("too big inline request (over {max} bytes without a newline)")]
    InlineTooLong { max: usize },
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Cuts the next command off the front of `buf`. `Ok(None)`: the frame is not complete
/// yet (nothing is consumed; call again with more bytes). `Ok(Some(args))` consumed one
/// frame; `args` is empty for a blank inline line or `*0`, which Redis ignores.
pub fn parse(
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => {
            let Some((end, spans)) = scan_multibulk(buf, limits)? else {
                return Ok(None);
            };
            let frame = buf.split_to(end).freeze();
            Ok(Some(
                spans
                    .into_iter()
                    .map(|(start, len)| frame.slice(start..start + len))
                    .collect(),
            ))
        }
        Some(_) => {
            let window = &buf[..buf.len().min(limits.max_inline)];
            let Some(newline) = window.iter().position(|&b| b == b'\n') else {
                if buf.len() >= limits.max_inline {
                    return Err(ProtocolError::InlineTooLong {
                        max: limits.max_inline,
                    });
                }
                return Ok(None);
            };
            let line = buf.split_to(newline + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let args = split_inline(line)?;
            if args.len() > limits.max_args {
                return Err(ProtocolError::TooManyArguments {
                    count: args.len(),
                    max: limits.max_args,
                });
            }
            Ok(Some(args.into_iter().map(Bytes::from).collect()))
        }
    }
}

/// Where each argument of a frame lies: (start, length).
type Spans = Vec<(usize, usize)>;

/// Where a complete multibulk frame ends and where its arguments lie (start, length), or
/// None while it is incomplete. Every limit is checked as soon as its header is in.
fn scan_multibulk(
    buf: &[u8],
    limits: &FrameLimits,
) -> Result<Option<(usize, Spans)>, ProtocolError> {
    let Some((count, mut pos)) = header(buf, 0, ProtocolError::MultibulkLength)? else {
        return Ok(None);
    };
    let count = usize::try_from(count).map_err(|_| ProtocolError::MultibulkLength)?;
    if count > limits.max_args {
        return Err(ProtocolError::TooManyArguments {
            count,
            max: limits.max_args,
        });
    }
    // Not `with_capacity(count)`: the count is the client's word until the bulks arrive.
    let mut spans = Vec::new();
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
        }
        let Some((len, start)) = header(buf, pos, ProtocolError::BulkLength)? else {
            return Ok(None);
        };
        let len = u64::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
        if len > limits.max_bulk as u64 {
            return Err(ProtocolError::BulkTooLong {
                len,
                max: limits.max_bulk,
            });
        }
        let len = len as usize;
        let end = start + len + 2;
        if end > limits.max_command {
            return Err(ProtocolError::CommandTooLong {
                max: limits.max_command,
            });
        }
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[start + len..end] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        spans.push((start, len));
        pos = end;
    }
    Ok(Some((pos, spans)))
}

/// A `*N\r\n` or `$N\r\n` header at `at`: the number and where the header ends, None when
/// incomplete. Anything but an optional `-` and digits before the CRLF is `invalid`.
fn header(
    buf: &[u8],
    at: usize,
    invalid: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let digits_from = at + 1;
    let mut i = digits_from;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\r') => break,
            Some(b'-') if i == digits_from => {}
            Some(b) if b.is_ascii_digit() && i - digits_from < MAX_HEADER_DIGITS => {}
            Some(_) => return Err(invalid),
        }
        i += 1;
    }
    match buf.get(i + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(invalid),
    }
    let number = std::str::from_utf8(&buf[digits_from..i])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(invalid)?;
    Ok(Some((number, i + 2)))
}

/// Splits an inline command line like Redis's `sdssplitargs`: whitespace separates
/// arguments; an argument may be "double quoted" (with `\n`, `\r`, `\t`, `\\`, `\"` and
/// `\xHH` escapes) or 'single quoted' (with `\'`), and a closing quote must end it.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let Some(&first) = line.get(i) else {
            return Ok(args);
        };
        let mut arg = Vec::new();
        match first {
            b'"' | b'\'' => {
                i = quoted(line, i + 1, first, &mut arg)?;
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            _ => {
                while let Some(&b) = line.get(i).filter(|b| !b.is_ascii_whitespace()) {
                    arg.push(b);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Reads a quoted argument starting after its opening `quote`; returns the index after
/// the closing quote.
fn quoted(line: &[u8], mut i: usize, quote: u8, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        let b = *line.get(i).ok_or(ProtocolError::UnbalancedQuotes)?;
        match (b, line.get(i + 1).copied()) {
            (b'\\', Some(next)) if quote == b'\'' => {
                if next == b'\'' {
                    arg.push(b'\'');
                    i += 2;
                } else {
                    arg.push(b'\\');
                    i += 1;
                }
            }
            (b'\\', Some(b'x')) if hex_byte(line.get(i + 2..i + 4)).is_some() => {
                arg.push(hex_byte(line.get(i + 2..i + 4)).expect("checked"));
                i += 4;
            }
            (b'\\', Some(next)) => {
                arg.push(match next {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                i += 2;
            }
            (b, _) if b == quote => return Ok(i + 1),
            (b, _) => {
                arg.push(b);
                i += 1;
            }
        }
    }
}

fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let digits = std::str::from_utf8(digits?).ok()?;
    u8::from_str_radix(digits, 16).ok()
}

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One reply. Maps and nulls are RESP3 types that RESP2 spells as flat arrays and `$-1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// The error code and message, e.g. `ERR unknown command 'x'`.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// A simple string; CR and LF (which would end the line early) become spaces.
    pub fn simple(text: impl Into<String>) -> Reply {
        Reply::Simple(one_line(text.into()))
    }

    /// An error reply: `code_and_message` starts with its code (`ERR`, `QUORUM`, ...).
    pub fn error(code_and_message: impl Into<String>) -> Reply {
        Reply::Error(one_line(code_and_message.into()))
    }

    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.put_slice(bytes);
                out.put_slice(b"\r\n");
            }
            Reply::Null => match protocol {
                Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                items.iter().for_each(|item| item.encode(protocol, out));
            }
            Reply::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => line(out, b'*', (2 * pairs.len()).to_string().as_bytes()),
                    Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

fn one_line(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ")
    } else {
        text
    }
}

fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.put_u8(kind);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_args: 16,
        max_bulk: 1024,
        max_inline: 64 * 1024,
        max_command: 4096,
    };

    fn multibulk(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn parse_all(bytes: &[u8]) -> (Vec<Vec<Bytes>>, Result<(), ProtocolError>, usize) {
        let mut buf = BytesMut::from(bytes);
        let mut commands = Vec::new();
        loop {
            match parse(&mut buf, &LIMITS) {
                Ok(Some(args)) => commands.push(args),
                Ok(None) => return (commands, Ok(()), buf.len()),
                Err(e) => return (commands, Err(e), buf.len()),
            }
        }
    }

    #[test]
    fn pipelined_commands_come_out_in_order_and_blank_ones_are_empty() {
        let mut bytes = multibulk(&[b"SET", b"k", b"v\r\n with CRLF"]);
        bytes.extend(b"GET k\r\n\r\n*0\r\n");
        bytes.extend(multibulk(&[b"GET", b""]));
        let (commands, result, left) = parse_all(&bytes);
        assert_eq!(result, Ok(()));
        assert_eq!(left, 0);
        let expected: Vec<Vec<&[u8]>> = vec![
            vec![b"SET", b"k", b"v\r\n with CRLF"],
            vec![b"GET", b"k"],
            vec![],
            vec![],
            vec![b"GET", b""],
        ];
        assert_eq!(commands, expected);
    }

    #[test]
    fn a_truncated_frame_consumes_nothing_until_it_is_complete() {
        let frames = [
            multibulk(&[b"SET", b"key", b"value"]),
            b"SET key \"quoted value\"\r\n".to_vec(),
        ];
        for frame in frames {
            for cut in 0..frame.len() {
                let mut buf = BytesMut::from(&frame[..cut]);
                assert_eq!(parse(&mut buf, &LIMITS), Ok(None), "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
                buf.extend_from_slice(&frame[cut..]);
                let args = parse(&mut buf, &LIMITS).unwrap().unwrap();
                assert_eq!(args.len(), 3);
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_from_the_header_alone() {
        let cases: [(&[u8], ProtocolError); 10] = [
            (
                b"*99999999999999\r\n",
                ProtocolError::TooManyArguments {
                    count: 99999999999999,
                    max: 16,
                },
            ),
            (
                b"*17\r\n",
                ProtocolError::TooManyArguments { count: 17, max: 16 },
            ),
            (b"*-3\r\n", ProtocolError::MultibulkLength),
            (b"*1\r\n$-1\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$-5\r\n", ProtocolError::BulkLength),
            (
                b"*1\r\n$99999999999\r\n",
                ProtocolError::BulkTooLong {
                    len: 99999999999,
                    max: 1024,
                },
            ),
            (
                b"*1\r\n$1025\r\n",
                ProtocolError::BulkTooLong {
                    len: 1025,
                    max: 1024,
                },
            ),
            (b"*1\r\n$12a\r\n", ProtocolError::BulkLength),
            (b"*1\r\n:5\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$3\r\nabcXY", ProtocolError::MissingCrlf),
        ];
        for (bytes, expected) in cases {
            let (_, result, _) = parse_all(bytes);
            assert_eq!(result, Err(expected), "{}", String::from_utf8_lossy(bytes));
        }
        // Digits without end, and a header whose CR is not followed by LF.
        assert_eq!(
            parse_all(&[b"*1".as_slice(), &[b'9'; 30]].concat()).1,
            Err(ProtocolError::MultibulkLength)
        );
        assert_eq!(parse_all(b"*1\rX").1, Err(ProtocolError::MultibulkLength));
        // Five bulks of 1000 bytes each fit max_bulk but not max_command: refused at the
        // fifth header, before its data.
        let mut bytes = b"*5\r\n".to_vec();
        for _ in 0..4 {
            bytes.extend(format!("$1000\r\n{}\r\n", "x".repeat(1000)).as_bytes());
        }
        bytes.extend(b"$1000\r\n");
        assert_eq!(
            parse_all(&bytes).1,
            Err(ProtocolError::CommandTooLong { max: 4096 })
        );
    }

    #[test]
    fn a_huge_inline_line_is_refused_once_the_limit_is_buffered() {
        let mut buf = BytesMut::from(&vec![b'a'; LIMITS.max_inline - 1][..]);
        assert_eq!(parse(&mut buf, &LIMITS), Ok(None));
        buf.extend_from_slice(&vec![b'a'; 1024 * 1024]);
        assert_eq!(
            parse(&mut buf, &LIMITS),
            Err(ProtocolError::InlineTooLong { max: 64 * 1024 })
        );
        // Just under the limit, with its newline, is a command.
        let mut line = vec![b'a'; LIMITS.max_inline - 1];
        line.push(b'\n');
        let args = parse(&mut BytesMut::from(&line[..]), &LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!(args[0].len(), LIMITS.max_inline - 1);
        // Many short arguments on one line count against max_args.
        let many = format!("{}\r\n", "a ".repeat(17));
        assert_eq!(
            parse(&mut BytesMut::from(many.as_bytes()), &LIMITS),
            Err(ProtocolError::TooManyArguments { count: 17, max: 16 })
        );
    }

    #[test]
    fn inline_quotes_and_escapes_follow_redis() {
        let (commands, result, _) =
            parse_all(b"SET \"a b\\x41\\n\" 'it\\'s' plain\"quote\r\nECHO \"\"\r\n");
        assert_eq!(result, Ok(()));
        let expected: Vec<Vec<&[u8]>> = vec![
            vec![b"SET", b"a bA\n", b"it's", b"plain\"quote"],
            vec![b"ECHO", b""],
        ];
        assert_eq!(commands, expected);
        for bad in [&b"SET \"open\r\n"[..], b"SET 'open\r\n", b"SET \"a\"b\r\n"] {
            assert_eq!(parse_all(bad).1, Err(ProtocolError::UnbalancedQuotes));
        }
    }

    #[test]
    fn a_hundred_thousand_pipelined_commands_parse_in_order() {
        let mut bytes = Vec::new();
        for i in 0..100_000 {
            bytes.extend(multibulk(&[b"GET", format!("k{i}").as_bytes()]));
        }
        let (commands, result, left) = parse_all(&bytes);
        assert_eq!((result, left, commands.len()), (Ok(()), 0, 100_000));
        assert_eq!(&commands[99_999][1][..], b"k99999");
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        let reply = Reply::Array(vec![
            Reply::Null,
            Reply::bulk(&b"v"[..]),
            Reply::Integer(-2),
            Reply::Map(vec![(Reply::simple("a"), Reply::error("ERR x\r\ny"))]),
        ]);
        let encode = |p| {
            let mut out = BytesMut::new();
            reply.encode(p, &mut out);
            out
        };
        assert_eq!(
            &encode(Protocol::Resp2)[..],
            b"*4\r\n$-1\r\n$1\r\nv\r\n:-2\r\n*2\r\n+a\r\n-ERR x  y\r\n"
        );
        assert_eq!(
            &encode(Protocol::Resp3)[..],
            b"*4\r\n_\r\n$1\r\nv\r\n:-2\r\n%1\r\n+a\r\n-ERR x  y\r\n"
        );
    }

    proptest! {
        #[test]
        fn any_command_round_trips(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..16)) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let (commands, result, left) = parse_all(&multibulk(&refs));
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(left, 0);
            prop_assert_eq!(commands, vec![args.into_iter().map(Bytes::from).collect::<Vec<_>>()]);
        }

        #[test]
        fn garbage_never_panics_and_always_progresses_or_waits(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..=bytes.len() {
                let before = buf.len();
                match parse(&mut buf, &LIMITS) {
                    Ok(Some(_)) => prop_assert!(buf.len() < before, "a parsed frame consumes bytes"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
