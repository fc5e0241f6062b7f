//! `txn`: one atomic transaction read from standard input in etcdctl's format:
//!
//! ```text
//! <compares, one per line>
//! <blank line>
//! <requests run if every compare holds: put / get / del lines>
//! <blank line>
//! <requests run otherwise>
//! <blank line or end of input>
//! ```
//!
//! A compare is `TARGET("key") OP "value"`: TARGET is `ver`/`version`, `c`/`create`,
//! `m`/`mod`, `val`/`value` or `lease`; OP is `=`, `!=`, `<` or `>`; key and value are Go
//! quoted strings (`"a\nb"`, `"\xff"`); versions and revisions are decimal, leases hex. A
//! request line is a `put`, `get` or `del` command line with the same flags as the commands.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::kv::{DelOp, GetOp, PutOp};
use super::output;
use super::ClientError;
use ballot_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ballot_proto::etcdserverpb::kv_client::KvClient;
use ballot_proto::etcdserverpb::{request_op, Compare, RequestOp, TxnRequest};
use clap::{Args, Parser};
use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;

#[derive(Args, Debug)]
#[command(
    after_help = "Input (standard input), sections separated by a blank line:\n  \
    1. compares, one per line: TARGET(\"key\") OP \"value\"\n     \
       TARGET: ver|version, c|create, m|mod, val|value, lease   OP: = != < >\n  \
    2. requests run when every compare holds: put / get / del lines\n  \
    3. requests run otherwise\n\n\
    Output: SUCCESS or FAILURE, then the output of each request run, each after a blank line.\n\n\
    Examples:\n  \
    printf 'mod(\"key1\") > \"0\"\\n\\nput key1 \"overwrote-key1\"\\n\\nput key1 \"created-key1\"\\nput key2 \"some extra key\"\\n\\n' | ballot txn\n  \
    ballot txn -i        # prompts for each section\n\n  \
    ballot txn <<'EOF'\n  \
    value(\"lock\") = \"free\"\n\n  \
    put lock \"taken\"\n  \
    get config --prefix\n\n  \
    get lock\n\n  \
    EOF"
)]
pub struct TxnArgs {
    /// Prompt for each section (on stderr) while reading standard input.
    #[arg(short, long)]
    pub interactive: bool,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

/// One request line of a transaction: the `put`, `get` and `del` commands' own flags.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, disable_help_subcommand = true)]
enum TxnLine {
    Put(PutOp),
    Get(GetOp),
    Del(DelOp),
}

/// The three sections of the input, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Compares,
    Success,
    Failure,
}

impl Section {
    fn prompt(self) -> &'static str {
        match self {
            Section::Compares => "compares:",
            Section::Success => "success requests (get, put, del):",
            Section::Failure => "failure requests (get, put, del):",
        }
    }
}

/// Parses a whole transaction. `on_section` is called as each section starts (for prompts).
pub fn parse_txn<I>(
    lines: I,
    mut on_section: impl FnMut(Section),
) -> Result<TxnRequest, ClientError>
where
    I: IntoIterator<Item = std::io::Result<String>>,
{
    let mut request = TxnRequest::default();
    let mut section = Section::Compares;
    on_section(section);
    let mut finished = false;
    for (index, line) in lines.into_iter().enumerate() {
        let line = line.map_err(|e| ClientError::Local(format!("cannot read stdin: {e}")))?;
        let line = line.trim();
        let invalid = |message: String| {
            ClientError::Usage(format!("txn input line {}: {message}", index + 1))
        };
        if finished {
            if line.is_empty() {
                continue;
            }
            return Err(invalid(format!(
                "unexpected input after the failure requests: {line}"
            )));
        }
        if line.is_empty() {
            match section {
                Section::Compares => section = Section::Success,
                Section::Success => section = Section::Failure,
                Section::Failure => finished = true,
            }
            if !finished {
                on_section(section);
            }
            continue;
        }
        match section {
            Section::Compares => request.compare.push(parse_compare(line).map_err(invalid)?),
            Section::Success => request.success.push(parse_request(line).map_err(invalid)?),
            Section::Failure => request.failure.push(parse_request(line).map_err(invalid)?),
        }
    }
    Ok(request)
}

/// `TARGET("key") OP "value"`, as etcdctl's ParseCompare reads it.
pub fn parse_compare(line: &str) -> Result<Compare, String> {
    let malformed = || format!("malformed comparison: {line}");
    let (target, rest) = line.split_once('(').ok_or_else(malformed)?;
    let (key, rest) =
        parse_quoted(rest.trim_start()).map_err(|e| format!("{}: {e}", malformed()))?;
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .ok_or_else(malformed)?
        .trim_start();
    let op_len = rest.find(char::is_whitespace).ok_or_else(malformed)?;
    let (op, rest) = rest.split_at(op_len);
    let (value, rest) =
        parse_quoted(rest.trim_start()).map_err(|e| format!("{}: {e}", malformed()))?;
    if !rest.trim().is_empty() {
        return Err(format!(
            "{}: unexpected {:?} at the end",
            malformed(),
            rest.trim()
        ));
    }
    let result = match op {
        "=" | "==" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        ">" => CompareResult::Greater,
        "<" => CompareResult::Less,
        other => {
            return Err(format!(
                "malformed comparison: {line} (unknown operator {other:?}; use =, !=, < or >)"
            ))
        }
    };
    let number = |radix: u32| {
        let text = String::from_utf8_lossy(&value).into_owned();
        i64::from_str_radix(&text, radix)
            .map_err(|e| format!("invalid txn compare request: {line} ({text:?}: {e})"))
    };
    let (target, union) = match target.trim() {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number(10)?)),
        "c" | "create" => (CompareTarget::Create, TargetUnion::CreateRevision(number(10)?)),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number(10)?)),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value.clone().into())),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(number(16)?)),
        other => {
            return Err(format!(
                "malformed comparison: {line} (unknown target {other:?}; use ver, create, mod, value or lease)"
            ))
        }
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: Default::default(),
        target_union: Some(union),
    })
}

/// A `put`, `get` or `del` line, parsed with the commands' own flags.
pub fn parse_request(line: &str) -> Result<RequestOp, String> {
    let words = split_words(line)?;
    if words.len() < 2 {
        return Err(format!(
            "invalid txn request: {line} (expected put, get or del with a key)"
        ));
    }
    let parsed =
        TxnLine::try_parse_from(words.into_iter().map(OsString::from_vec)).map_err(|e| {
            let rendered = e.to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            format!("invalid txn request: {line} ({first})")
        })?;
    let request = match parsed {
        TxnLine::Put(op) => {
            let value = op.value.clone().ok_or_else(|| {
                format!("invalid txn request: {line} (put needs a key and a value)")
            })?;
            request_op::Request::RequestPut(op.request(value.into_vec()))
        }
        TxnLine::Get(op) => {
            request_op::Request::RequestRange(op.request().map_err(|e| format!("{line}: {e}"))?)
        }
        TxnLine::Del(op) => request_op::Request::RequestDeleteRange(
            op.request().map_err(|e| format!("{line}: {e}"))?,
        ),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

/// Splits a request line into words as etcdctl's argify does: "double quoted" (Go escapes),
/// 'single quoted' (taken as is), or bare words up to the next space.
pub fn split_words(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') || rest.starts_with('`') {
            let (word, after) = parse_quoted(rest)?;
            words.push(word);
            rest = after;
        } else if let Some(quoted) = rest.strip_prefix('\'') {
            let end = quoted
                .find('\'')
                .ok_or_else(|| format!("unterminated ' in: {line}"))?;
            words.push(quoted.as_bytes()[..end].to_vec());
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest.as_bytes()[..end].to_vec());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(words)
}

/// Reads one Go-quoted string (`"..."` with Go's escapes, or a raw `` `...` ``) from the start
/// of `text`; returns its bytes and what follows.
pub fn parse_quoted(text: &str) -> Result<(Vec<u8>, &str), String> {
    if let Some(raw) = text.strip_prefix('`') {
        let end = raw.find('`').ok_or("unterminated raw string")?;
        return Ok((raw.as_bytes()[..end].to_vec(), &raw[end + 1..]));
    }
    let body = text
        .strip_prefix('"')
        .ok_or_else(|| format!("expected a quoted string at {text:?}"))?;
    let mut out = Vec::new();
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[index + 1..])),
            '\\' => {
                let (_, escape) = chars.next().ok_or("unterminated string")?;
                match escape {
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    '\\' | '"' | '\'' => out.push(escape as u8),
                    'x' => out.push(take_number(&mut chars, 2, 16)? as u8),
                    '0'..='7' => {
                        let rest = take_number(&mut chars, 2, 8)?;
                        let value = (escape as u32 - '0' as u32) * 64 + rest;
                        out.push(u8::try_from(value).map_err(|_| "octal escape above \\377")?);
                    }
                    'u' | 'U' => {
                        let digits = if escape == 'u' { 4 } else { 8 };
                        let code = take_number(&mut chars, digits, 16)?;
                        let c = char::from_u32(code).ok_or("invalid unicode escape")?;
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                }
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    Err("unterminated string".into())
}

fn take_number(
    chars: &mut std::str::CharIndices<'_>,
    digits: usize,
    radix: u32,
) -> Result<u32, String> {
    let mut value = 0u32;
    for _ in 0..digits {
        let (_, c) = chars.next().ok_or("escape cut short")?;
        let digit = c
            .to_digit(radix)
            .ok_or_else(|| format!("bad digit {c:?} in escape"))?;
        value = value * radix + digit;
    }
    Ok(value)
}

/// A transaction that only reads may be retried on the next endpoint like any read.
fn retry_for(request: &TxnRequest) -> Retry {
    let only_reads = request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))));
    if only_reads {
        Retry::Read
    } else {
        Retry::Write
    }
}

pub async fn run(args: TxnArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    output::require(format, output::SIMPLE_JSON, "txn")?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let interactive = args.interactive;
    let request = parse_txn(std::io::stdin().lock().lines(), |section| {
        if interactive {
            eprintln!("{}", section.prompt());
        }
    })?;
    let (_, response) =
        endpoints
            .call(retry_for(&request), |channel| {
                let request = endpoints.key_request(request.clone());
                async move {
                    Ok::<_, CallError>(KvClient::new(channel).txn(request).await?.into_inner())
                }
            })
            .await?;
    output::write_stdout(&output::txn(format, &response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_proto::etcdserverpb::range_request::SortOrder;

    fn parse(input: &str) -> Result<TxnRequest, ClientError> {
        parse_txn(input.lines().map(|l| Ok(l.to_string())), |_| {})
    }

    fn compare(
        result: CompareResult,
        target: CompareTarget,
        key: &str,
        union: TargetUnion,
    ) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: Default::default(),
            target_union: Some(union),
        }
    }

    #[test]
    fn etcdctl_readme_example() {
        let request = parse(
            "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\n\nput key1 \"created-key1\"\nput key2 \"some extra key\"\n\n",
        )
        .unwrap();
        assert_eq!(
            request.compare,
            vec![compare(
                CompareResult::Greater,
                CompareTarget::Mod,
                "key1",
                TargetUnion::ModRevision(0)
            )]
        );
        let puts = |ops: &[RequestOp]| -> Vec<(String, String)> {
            ops.iter()
                .map(|op| match &op.request {
                    Some(request_op::Request::RequestPut(p)) => (
                        String::from_utf8_lossy(&p.key).into_owned(),
                        String::from_utf8_lossy(&p.value).into_owned(),
                    ),
                    other => panic!("not a put: {other:?}"),
                })
                .collect()
        };
        assert_eq!(
            puts(&request.success),
            [("key1".into(), "overwrote-key1".into())]
        );
        assert_eq!(
            puts(&request.failure),
            [
                ("key1".into(), "created-key1".into()),
                ("key2".into(), "some extra key".into())
            ]
        );
    }

    #[test]
    fn every_compare_target_and_operator() {
        let request = parse(
            "ver(\"a\") = \"1\"\nversion(\"a\") != \"2\"\nc(\"b\") < \"3\"\ncreate(\"b\") > \"4\"\n\
             m(\"c\") = \"5\"\nval(\"d\") = \"x y\"\nvalue(\"d\") != \"\\x00\\n\"\nlease(\"e\") = \"1f\"\n",
        )
        .unwrap();
        let expected = vec![
            compare(
                CompareResult::Equal,
                CompareTarget::Version,
                "a",
                TargetUnion::Version(1),
            ),
            compare(
                CompareResult::NotEqual,
                CompareTarget::Version,
                "a",
                TargetUnion::Version(2),
            ),
            compare(
                CompareResult::Less,
                CompareTarget::Create,
                "b",
                TargetUnion::CreateRevision(3),
            ),
            compare(
                CompareResult::Greater,
                CompareTarget::Create,
                "b",
                TargetUnion::CreateRevision(4),
            ),
            compare(
                CompareResult::Equal,
                CompareTarget::Mod,
                "c",
                TargetUnion::ModRevision(5),
            ),
            compare(
                CompareResult::Equal,
                CompareTarget::Value,
                "d",
                TargetUnion::Value("x y".into()),
            ),
            compare(
                CompareResult::NotEqual,
                CompareTarget::Value,
                "d",
                TargetUnion::Value(b"\0\n".to_vec().into()),
            ),
            compare(
                CompareResult::Equal,
                CompareTarget::Lease,
                "e",
                TargetUnion::Lease(0x1f),
            ),
        ];
        assert_eq!(request.compare, expected);
        assert!(
            request.success.is_empty() && request.failure.is_empty(),
            "end of input ends sections"
        );
    }

    #[test]
    fn request_lines_take_the_commands_flags() {
        let request = parse(
            "\nget --prefix job/ --limit 2 --order descend\ndel a c\nput k 'single quoted' --prev-kv\n\ndel --from-key x --prev-kv\n",
        )
        .unwrap();
        assert!(request.compare.is_empty());
        match &request.success[0].request {
            Some(request_op::Request::RequestRange(r)) => {
                assert_eq!((&r.key[..], &r.range_end[..]), (&b"job/"[..], &b"job0"[..]));
                assert_eq!(r.limit, 2);
                assert_eq!(r.sort_order, SortOrder::Descend as i32);
            }
            other => panic!("{other:?}"),
        }
        match &request.success[1].request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                assert_eq!((&d.key[..], &d.range_end[..]), (&b"a"[..], &b"c"[..]));
            }
            other => panic!("{other:?}"),
        }
        match &request.success[2].request {
            Some(request_op::Request::RequestPut(p)) => {
                assert_eq!(&p.value[..], b"single quoted");
                assert!(p.prev_kv);
            }
            other => panic!("{other:?}"),
        }
        match &request.failure[0].request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                assert_eq!((&d.key[..], &d.range_end[..]), (&b"x"[..], &[0u8][..]));
                assert!(d.prev_kv);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_quoted_strings_unescape() {
        assert_eq!(
            parse_quoted(r#""a\tb\\\"c" rest"#).unwrap(),
            (b"a\tb\\\"c".to_vec(), " rest")
        );
        assert_eq!(
            parse_quoted(r#""\xff\101\u00e9""#).unwrap().0,
            b"\xffA\xc3\xa9".to_vec()
        );
        assert_eq!(parse_quoted("`raw \\n`").unwrap().0, b"raw \\n".to_vec());
        assert!(parse_quoted("\"open").is_err());
        assert!(parse_quoted("bare").is_err());
        assert_eq!(
            split_words(r#"put "multi\nline" v2"#).unwrap(),
            vec![b"put".to_vec(), b"multi\nline".to_vec(), b"v2".to_vec()]
        );
    }

    #[test]
    fn bad_input_is_a_usage_error_naming_the_line() {
        for (input, expected) in [
            (
                "mod(\"k\") >> \"1\"\n",
                "line 1: malformed comparison: mod(\"k\") >> \"1\" (unknown operator",
            ),
            ("size(\"k\") = \"1\"\n", "unknown target \"size\""),
            ("mod(\"k\") = \"x\"\n", "invalid txn compare request"),
            ("mod(k) = \"1\"\n", "malformed comparison"),
            (
                "\nput onlykey\n",
                "line 2: invalid txn request: put onlykey (put needs a key and a value)",
            ),
            (
                "\nfrobnicate k v\n",
                "line 2: invalid txn request: frobnicate k v",
            ),
            ("\nget a --prefix --from-key\n", "cannot be used with"),
            (
                "\n\n\nput a b\n",
                "line 4: unexpected input after the failure requests",
            ),
        ] {
            let error = parse(input).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            assert!(error.to_string().contains(expected), "{input:?}: {error}");
        }
    }

    #[test]
    fn sections_are_announced_for_interactive_prompts() {
        let mut seen = Vec::new();
        parse_txn(
            "val(\"a\") = \"b\"\n\nget a\n\nget b\n\n"
                .lines()
                .map(|l| Ok(l.to_string())),
            |section| seen.push(section),
        )
        .unwrap();
        assert_eq!(
            seen,
            [Section::Compares, Section::Success, Section::Failure]
        );
    }

    #[test]
    fn read_only_transactions_may_move_to_the_next_endpoint() {
        assert_eq!(
            retry_for(&parse("\nget a\n\nget b\n").unwrap()),
            Retry::Read
        );
        assert_eq!(
            retry_for(&parse("\nget a\n\nput b c\n").unwrap()),
            Retry::Write
        );
    }
}
