//! SePay's three body formats → the JSON that [`crate::parse`] reads.
//!
//! The shop picks the format in SePay's webhook form (step 1, "Content-Type"):
//! JSON (the default), `multipart/form-data` or
//! `application/x-www-form-urlencoded`. Form bodies carry the same field names
//! as the JSON body, every value as text, so they are rebuilt into that JSON
//! object here and the one parser sees one shape.
//!
//! The format is chosen by the `Content-Type` header only. SePay's pages never
//! say the header may be missing, so there is no sniffing: a missing or other
//! media type is read as JSON, which is what this plugin did before forms were
//! supported (and what `plugin test` sends).
//!
//! Strict on purpose: a malformed form is a 400 rather than a guess, since a
//! guessed amount is worse than a refused webhook the poller can backfill.

use std::borrow::Cow;

use serde_json::{Map, Value};
use soundbox_plugin_sdk::{ConnectorError, HttpRequest};

/// Fields SePay sends as JSON integers; in a form they are decimal text.
const INTEGER_FIELDS: [&str; 3] = ["id", "transferAmount", "accumulated"];
/// Fields that are `null` in JSON when absent. In a form, an empty value or
/// the text `null` stands for that. `content` and `description` are not here:
/// a payer may type "null", and an empty memo stays an empty memo.
const NULLABLE_FIELDS: [&str; 5] = [
    "gateway",
    "transactionDate",
    "subAccount",
    "code",
    "referenceCode",
];

/// SePay's body has a dozen fields; anything far past that is not SePay.
const MAX_FIELDS: usize = 64;
const MAX_NAME_BYTES: usize = 64;
/// RFC 2046 caps a multipart boundary at 70 characters.
const MAX_BOUNDARY_BYTES: usize = 70;
const MAX_PART_HEADER_BYTES: usize = 1024;

/// How the body is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Json,
    UrlEncoded,
    Multipart { boundary: String },
}

/// The format named by a `Content-Type` value (none: JSON, see module docs).
pub fn format(content_type: Option<&str>) -> Result<Format, ConnectorError> {
    let Some(content_type) = content_type else {
        return Ok(Format::Json);
    };
    // JSON keeps its old leniency: only the form types' parameters matter.
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        && !media.eq_ignore_ascii_case("multipart/form-data")
    {
        return Ok(Format::Json);
    }
    let (media, params) = split_params(content_type)?;
    let charset = params.iter().find(|(k, _)| k == "charset");
    if let Some((_, charset)) = charset
        && !is_utf8(charset)
    {
        return Err(bad(format!("charset `{charset}` is not UTF-8")));
    }
    match media.as_str() {
        "application/x-www-form-urlencoded" => Ok(Format::UrlEncoded),
        "multipart/form-data" => {
            let boundary = params
                .into_iter()
                .find(|(k, _)| k == "boundary")
                .map(|(_, v)| v)
                .ok_or_else(|| bad("multipart/form-data without a boundary"))?;
            let valid = !boundary.is_empty()
                && boundary.len() <= MAX_BOUNDARY_BYTES
                && boundary.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !boundary.ends_with(' ');
            if !valid {
                return Err(bad("multipart boundary is not a valid boundary"));
            }
            Ok(Format::Multipart { boundary })
        }
        _ => Ok(Format::Json),
    }
}

/// The body as SePay's JSON object: as received for JSON, rebuilt for forms.
pub fn as_json(request: &HttpRequest) -> Result<Cow<'_, [u8]>, ConnectorError> {
    let fields = match format(request.header("content-type"))? {
        Format::Json => return Ok(Cow::Borrowed(&request.body)),
        Format::UrlEncoded => urlencoded(&request.body)?,
        Format::Multipart { boundary } => multipart(&request.body, &boundary)?,
    };
    let json = fields_to_json(fields)?;
    serde_json::to_vec(&json)
        .map(Cow::Owned)
        .map_err(|e| ConnectorError::Fatal(format!("could not re-encode form fields: {e}")))
}

/// Form fields (all text) → SePay's JSON object with its JSON types.
pub fn fields_to_json(fields: Vec<(String, String)>) -> Result<Value, ConnectorError> {
    let mut object = Map::new();
    for (name, value) in fields {
        let typed = if INTEGER_FIELDS.contains(&name.as_str()) {
            let text = value.trim();
            if is_null(text) {
                Value::Null
            } else if let Ok(n) = text.parse::<u64>() {
                Value::from(n)
            } else if let Ok(n) = text.parse::<i64>() {
                Value::from(n)
            } else {
                return Err(bad(format!("form field `{name}` is not an integer")));
            }
        } else if NULLABLE_FIELDS.contains(&name.as_str()) && is_null(value.trim()) {
            Value::Null
        } else {
            Value::String(value)
        };
        if object.insert(name.clone(), typed).is_some() {
            // Two values for one field: which one is the payment? Refuse.
            return Err(bad(format!("form field `{name}` appears twice")));
        }
    }
    Ok(Value::Object(object))
}

fn is_null(text: &str) -> bool {
    text.is_empty() || text.eq_ignore_ascii_case("null")
}

/// Decodes `application/x-www-form-urlencoded`: `&`-separated `name=value`,
/// `+` for space, `%XX` escapes of UTF-8. A stray `%`, a field without `=`
/// or bytes that are not UTF-8 make the body malformed.
pub fn urlencoded(body: &[u8]) -> Result<Vec<(String, String)>, ConnectorError> {
    let mut fields = Vec::new();
    for part in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let eq = part
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("form field without `=`"))?;
        let name = percent_decode(&part[..eq])?;
        let value = percent_decode(&part[eq + 1..])?;
        push_field(&mut fields, name, value)?;
    }
    Ok(fields)
}

fn percent_decode(input: &[u8]) -> Result<String, ConnectorError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("form body has a `%` that is not `%XX`"))?;
                out.push(hex);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("form body is not UTF-8"))
}

/// Parses `multipart/form-data` (RFC 7578) with CRLF line ends: text fields
/// only. A part with a `filename` is skipped (SePay sends none); a missing
/// closing delimiter, a part without `Content-Disposition: form-data;
/// name=…`, a non-UTF-8 charset or a transfer encoding other than
/// 7bit/8bit/binary make the body malformed.
pub fn multipart(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, ConnectorError> {
    let delimiter = format!("--{boundary}");
    let next = format!("\r\n--{boundary}");
    // The first delimiter opens the body, or follows a preamble on its own line.
    let mut pos = if body.starts_with(delimiter.as_bytes()) {
        delimiter.len()
    } else {
        find(body, next.as_bytes(), 0)
            .map(|at| at + next.len())
            .ok_or_else(|| bad("multipart body without its boundary"))?
    };
    let mut fields = Vec::new();
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(fields); // closing delimiter; the epilogue is ignored
        }
        // Transport padding (spaces/tabs) may follow a delimiter before CRLF.
        let pad = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(bad("multipart delimiter not followed by a line end"));
        }
        let headers_start = pos + pad + 2;
        let headers_end = find(body, b"\r\n\r\n", headers_start)
            .filter(|&end| end - headers_start <= MAX_PART_HEADER_BYTES)
            .ok_or_else(|| bad("multipart part headers missing or too long"))?;
        let content_start = headers_end + 4;
        let content_end = find(body, next.as_bytes(), content_start)
            .ok_or_else(|| bad("multipart body is not closed by its boundary"))?;
        let headers = std::str::from_utf8(&body[headers_start..headers_end])
            .map_err(|_| bad("multipart part headers are not UTF-8"))?;
        if let Some(name) = part_name(headers)? {
            let value = String::from_utf8(body[content_start..content_end].to_vec())
                .map_err(|_| bad(format!("multipart field `{name}` is not UTF-8")))?;
            push_field(&mut fields, name, value)?;
        }
        pos = content_end + next.len();
    }
}

/// The field name of a part from its headers; `None` for a file part.
fn part_name(headers: &str) -> Result<Option<String>, ConnectorError> {
    let mut name = None;
    let mut is_file = false;
    for line in headers.split("\r\n") {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| bad("multipart part header without `:`"))?;
        let key = key.trim().to_ascii_lowercase();
        match key.as_str() {
            "content-disposition" => {
                let (kind, params) = split_params(value)?;
                if kind != "form-data" {
                    return Err(bad("multipart part is not form-data"));
                }
                for (k, v) in params {
                    match k.as_str() {
                        "name" => name = Some(v),
                        "filename" | "filename*" => is_file = true,
                        _ => {}
                    }
                }
            }
            "content-type" => {
                let (_, params) = split_params(value)?;
                if let Some((_, charset)) = params.iter().find(|(k, _)| k == "charset")
                    && !is_utf8(charset)
                {
                    return Err(bad(format!("multipart charset `{charset}` is not UTF-8")));
                }
            }
            "content-transfer-encoding" => {
                let encoding = value.trim().to_ascii_lowercase();
                if !matches!(encoding.as_str(), "7bit" | "8bit" | "binary") {
                    return Err(bad(format!(
                        "multipart transfer encoding `{encoding}` is not supported"
                    )));
                }
            }
            _ => {}
        }
    }
    let name = name.ok_or_else(|| bad("multipart part without a field name"))?;
    Ok((!is_file).then_some(name))
}

fn push_field(
    fields: &mut Vec<(String, String)>,
    name: String,
    value: String,
) -> Result<(), ConnectorError> {
    if fields.len() >= MAX_FIELDS {
        return Err(bad(format!("more than {MAX_FIELDS} form fields")));
    }
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(bad(
            "form field name is empty, too long or has control characters",
        ));
    }
    fields.push((name, value));
    Ok(())
}

/// Splits `type/subtype; k=v; k="quoted"` into the lower-case type and its
/// parameters (lower-case names). Quoted values may escape with `\`.
fn split_params(header: &str) -> Result<(String, Vec<(String, String)>), ConnectorError> {
    let (kind, mut rest) = header.split_once(';').unwrap_or((header, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| bad("header parameter without `=`"))?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(
                        chars
                            .next()
                            .map(|(_, c)| c)
                            .ok_or_else(|| bad("header parameter ends in `\\`"))?,
                    ),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| bad("header parameter has an unclosed quote"))?;
            (value, &quoted[end..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = remaining;
    }
    Ok((kind.trim().to_ascii_lowercase(), params))
}

fn is_utf8(charset: &str) -> bool {
    charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| at + from)
}

fn bad(reason: impl Into<String>) -> ConnectorError {
    ConnectorError::BadRequest(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SepayConnector;
    use soundbox_plugin_sdk::testing::TestHost;
    use soundbox_plugin_sdk::{BalanceChange, WebhookConnector, http::form_encode};

    /// The documented sample with Vietnamese text, `&`, `+`, `=` and `%` in
    /// the memo: what a form encoder must get through unharmed.
    fn sample() -> serde_json::Value {
        let mut hook: serde_json::Value = serde_json::from_str(include_str!(
            "../../../examples/payloads/sepay-webhook.json"
        ))
        .expect("sample");
        hook["content"] = "Nguyễn Văn Â chuyển tiền 100% & a+b=c / đơn #7".into();
        hook
    }

    /// The sample's fields as form text: numbers as decimals, `null` as
    /// `null_as` (SePay's pages do not say whether a null is sent empty).
    fn form_fields(hook: &serde_json::Value, null_as: &str) -> Vec<(String, String)> {
        let object = hook.as_object().expect("object");
        object
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::Null => null_as.to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }

    fn urlencode(fields: &[(String, String)]) -> Vec<u8> {
        fields
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    const BOUNDARY: &str = "----sepayBoundary7MA4YWxkTrZu0gW";

    fn multipart_body(fields: &[(String, String)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    fn request(content_type: &str, body: Vec<u8>) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: "/hooks/sepay".into(),
            query: String::new(),
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("authorization".into(), "Apikey k3y".into()),
            ],
            body,
        }
    }

    fn handle(req: HttpRequest) -> Result<BalanceChange, ConnectorError> {
        let host = TestHost::new().config("api_key", "k3y");
        let outcome = host.run(|| SepayConnector::handle(req))?;
        assert_eq!(outcome.reply.expect("reply").text(), r#"{"success":true}"#);
        let [change] = <[BalanceChange; 1]>::try_from(outcome.changes).expect("one change");
        Ok(change)
    }

    #[test]
    fn every_content_type_decodes_to_the_same_change() {
        let hook = sample();
        let from_json = handle(request(
            "application/json",
            serde_json::to_vec(&hook).expect("json"),
        ))
        .expect("json accepted");
        assert_eq!(
            from_json.content.as_deref(),
            Some("Nguyễn Văn Â chuyển tiền 100% & a+b=c / đơn #7")
        );
        for null_as in ["", "null"] {
            let fields = form_fields(&hook, null_as);
            for (content_type, body) in [
                ("application/x-www-form-urlencoded", urlencode(&fields)),
                (
                    "application/x-www-form-urlencoded; charset=UTF-8",
                    urlencode(&fields),
                ),
                (
                    &format!("multipart/form-data; boundary={BOUNDARY}"),
                    multipart_body(&fields),
                ),
                (
                    &format!("Multipart/Form-Data; boundary=\"{BOUNDARY}\""),
                    multipart_body(&fields),
                ),
            ] {
                let change = handle(request(content_type, body)).expect(content_type);
                assert_eq!(change, from_json, "{content_type}, null as {null_as:?}");
            }
        }
    }

    #[test]
    fn spaces_may_be_plus_or_percent_20() {
        let fields = urlencoded(b"content=a+b%20c%2Bd&x=").expect("valid");
        assert_eq!(fields[0], ("content".into(), "a b c+d".into()));
        assert_eq!(fields[1], ("x".into(), String::new()));
    }

    #[test]
    fn a_memo_that_says_null_stays_text() {
        let json = fields_to_json(vec![
            ("content".into(), "null".into()),
            ("code".into(), "null".into()),
            ("description".into(), String::new()),
        ])
        .expect("valid");
        assert_eq!(json["content"], "null");
        assert_eq!(json["code"], serde_json::Value::Null);
        assert_eq!(json["description"], "");
    }

    #[test]
    fn no_content_type_or_another_one_is_json() {
        assert_eq!(format(None).expect("json"), Format::Json);
        assert_eq!(format(Some("text/plain")).expect("json"), Format::Json);
        assert_eq!(
            format(Some("application/json; odd")).expect("json"),
            Format::Json
        );
        let mut req = request("application/json", b"{}".to_vec());
        req.headers.retain(|(k, _)| k != "content-type");
        assert!(matches!(as_json(&req), Ok(Cow::Borrowed(b"{}"))));
    }

    #[test]
    fn malformed_forms_are_bad_requests() {
        let hook = sample();
        let fields = form_fields(&hook, "");
        let good = String::from_utf8(urlencode(&fields)).expect("ascii");
        let mut twice = fields.clone();
        twice.push(("transferAmount".into(), "9000000".into()));
        let urlencoded_cases: Vec<Vec<u8>> = vec![
            good.replace("transferAmount=2277000", "transferAmount=2.277.000")
                .into_bytes(),
            good.replace("transferAmount=2277000", "transferAmount=abc")
                .into_bytes(),
            format!("{good}&content=%zz").into_bytes(),
            format!("{good}&content=%4").into_bytes(),
            format!("{good}&content=%C3").into_bytes(), // not UTF-8
            format!("{good}&noequals").into_bytes(),
            urlencode(&twice),
            (0..=MAX_FIELDS)
                .map(|i| format!("f{i}=1"))
                .collect::<Vec<_>>()
                .join("&")
                .into_bytes(),
            b"id=1&transferType=in".to_vec(), // SePay's required fields missing
        ];
        for body in urlencoded_cases {
            let result = handle(request("application/x-www-form-urlencoded", body.clone()));
            assert!(
                matches!(result, Err(ConnectorError::BadRequest(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(&body)
            );
        }

        let good = multipart_body(&fields);
        let good_text = String::from_utf8(good.clone()).expect("utf-8");
        let ct = format!("multipart/form-data; boundary={BOUNDARY}");
        let multipart_cases: Vec<(String, Vec<u8>)> = vec![
            // not closed
            (
                ct.clone(),
                good_text
                    .replace(&format!("--{BOUNDARY}--\r\n"), "")
                    .into_bytes(),
            ),
            // another boundary than the header's
            ("multipart/form-data; boundary=other".into(), good.clone()),
            ("multipart/form-data".into(), good.clone()),
            ("multipart/form-data; boundary=\"open".into(), good.clone()),
            // a part without a name, or not form-data
            (
                ct.clone(),
                good_text
                    .replacen("form-data; name=\"id\"", "form-data", 1)
                    .into_bytes(),
            ),
            (
                ct.clone(),
                good_text
                    .replacen("form-data; name=\"id\"", "attachment; name=\"id\"", 1)
                    .into_bytes(),
            ),
            // LF-only line ends
            (ct.clone(), good_text.replace("\r\n", "\n").into_bytes()),
            // base64 transfer encoding, a foreign charset
            (
                ct.clone(),
                good_text
                    .replacen(
                        "name=\"id\"\r\n",
                        "name=\"id\"\r\nContent-Transfer-Encoding: base64\r\n",
                        1,
                    )
                    .into_bytes(),
            ),
            (
                ct.clone(),
                good_text
                    .replacen(
                        "name=\"id\"\r\n",
                        "name=\"id\"\r\nContent-Type: text/plain; charset=windows-1258\r\n",
                        1,
                    )
                    .into_bytes(),
            ),
            // a field twice, not UTF-8
            (ct.clone(), multipart_body(&twice)),
            (
                ct.clone(),
                good_text
                    .replacen("chuy", "\u{0}", 1)
                    .into_bytes()
                    .into_iter()
                    .map(|b| if b == 0 { 0xC3 } else { b })
                    .collect(),
            ),
            (ct.clone(), Vec::new()),
        ];
        for (content_type, body) in multipart_cases {
            let result = handle(request(&content_type, body.clone()));
            assert!(
                matches!(result, Err(ConnectorError::BadRequest(_))),
                "{content_type}: {}: {result:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn multipart_tolerates_a_preamble_padding_part_headers_and_file_parts() {
        let body = format!(
            "preamble\r\n--{BOUNDARY}  \r\nContent-Disposition: form-data; name=\"content\"\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\nđơn 1\r\n--{BOUNDARY}\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nxx\r\n\
             --{BOUNDARY}--\r\nepilogue"
        );
        let fields = multipart(body.as_bytes(), BOUNDARY).expect("valid");
        assert_eq!(fields, vec![("content".into(), "đơn 1".into())]);
    }

    #[test]
    fn hmac_is_checked_over_the_raw_form_body() {
        use soundbox_plugin_sdk::{signature, time};
        let body = urlencode(&form_fields(&sample(), ""));
        let now = time::now_secs();
        let mut signed_text = format!("{now}.").into_bytes();
        signed_text.extend_from_slice(&body);
        let sig = signature::hmac_sha256_hex(b"s3cret", &signed_text);
        let host = TestHost::new()
            .config("auth", "hmac")
            .config("hmac_secret", "s3cret");
        let mut req = request("application/x-www-form-urlencoded", body);
        req.headers.retain(|(k, _)| k != "authorization");
        let req = req
            .with_header("X-SePay-Timestamp", &now.to_string())
            .with_header("X-SePay-Signature", &format!("sha256={sig}"));
        let outcome = host.run(|| SepayConnector::handle(req.clone()));
        assert_eq!(outcome.expect("accepted").changes.len(), 1);
        // The same fields re-encoded differently no longer verify.
        let mut reordered = req;
        reordered.body = reordered
            .body
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect::<Vec<u8>>();
        reordered.body = String::from_utf8_lossy(&reordered.body)
            .replace(' ', "%20")
            .into_bytes();
        assert!(matches!(
            host.run(|| SepayConnector::handle(reordered)),
            Err(ConnectorError::Unauthorized(_))
        ));
    }
}
