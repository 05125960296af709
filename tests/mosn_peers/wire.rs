//! MOSN's tunnel frames as MOSN writes and reads them (pkg/filter/network/tunnel/protocol.go).
//!
//! Encoding follows Go's `encoding/json` (struct field order, no `omitempty`, HTML escaping,
//! Go < 1.22 control-character escapes). Decoding follows `DecodeFromBuffer`'s order exactly:
//! "need more" while `len <= 8`, then the length, then the magic, then the flag, then the JSON;
//! version and type bytes are never looked at. The JSON is read the way `json.Unmarshal` fills
//! a struct: unknown keys ignored, exact then case-insensitive key match, `null` leaves the zero
//! value, a wrong type or a fractional number into an int64 is an error.

use serde_json::{Map, Value};

pub const MAGIC: [u8; 2] = [0x20, 0x88];
pub const VERSION: u8 = 0x01;
pub const HEADER_LEN: usize = 8;
pub const FLAG_INIT: u8 = 0x01;
pub const FLAG_RESPONSE: u8 = 0x02;
pub const FLAG_GRACEFUL_CLOSE: u8 = 0x03;
pub const REQUEST_TYPE: [u8; 2] = [0x01, 0x00];
pub const RESPONSE_TYPE: [u8; 2] = [0x02, 0x00];

/// `ConnectStatus` values (protocol.go:57-61).
pub const STATUS_UNKNOWN_FAILED: i64 = 0;
pub const STATUS_SUCCESS: i64 = 1;
pub const STATUS_AUTH_FAILED: i64 = 2;
pub const STATUS_VALIDATOR_NOT_FOUND: i64 = 3;
pub const STATUS_CLUSTER_NOT_EXIST: i64 = 4;

/// `ConnectionInitInfo` (protocol.go:69-76).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InitInfo {
    pub cluster_name: String,
    pub weight: i64,
    pub host_name: String,
    pub credential_policy: String,
    pub credential: String,
    /// `map[string]interface{}`; `None` is Go's nil map (`"extra":null`).
    pub extra: Option<Map<String, Value>>,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    Init(InitInfo),
    /// `ConnectionInitResponse{status}`.
    Response(i64),
    /// `GracefulCloseOnewayRequest{addresses, cluster_name}`.
    GracefulClose {
        addresses: Vec<String>,
        cluster_name: String,
    },
}

/// `DecodeFromBuffer`'s errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// "magic value is not same"
    Magic,
    /// `ErrUnRecognizedData` ("unrecognized payload data")
    UnrecognizedFlag(u8),
    /// "can't decode payload, err: ..."
    Payload(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Magic => write!(f, "magic value is not same"),
            DecodeError::UnrecognizedFlag(b) => {
                write!(f, "unrecognized payload data (flag {b:#04x})")
            }
            DecodeError::Payload(e) => write!(f, "can't decode payload, err: {e}"),
        }
    }
}

/// `Encode`: the header, then the payload; the length is truncated to u16 as MOSN does.
pub fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let typ = if flag == FLAG_RESPONSE {
        RESPONSE_TYPE
    } else {
        REQUEST_TYPE
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(flag);
    out.extend_from_slice(&typ);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A Go `json.Marshal` string literal (escapeHTML on, Go < 1.22 escapes for \b and \f).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a MOSN agent sends: weight and host name as given, `"extra":null`.
pub fn init_payload(info: &InitInfo) -> String {
    let extra = match &info.extra {
        None => "null".to_string(),
        // Go sorts map keys; serde_json's default map is sorted too.
        Some(m) => Value::Object(m.clone()).to_string(),
    };
    format!(
        "{{\"cluster_name\":{},\"weight\":{},\"host_name\":{},\"credential_policy\":{},\"credential\":{},\"extra\":{}}}",
        go_quote(&info.cluster_name),
        info.weight,
        go_quote(&info.host_name),
        go_quote(&info.credential_policy),
        go_quote(&info.credential),
        extra
    )
}

pub fn init_frame(info: &InitInfo) -> Vec<u8> {
    frame(FLAG_INIT, init_payload(info).as_bytes())
}

pub fn response_frame(status: i64) -> Vec<u8> {
    frame(FLAG_RESPONSE, format!("{{\"status\":{status}}}").as_bytes())
}

/// `addresses` is `make([]string, 0, n)` in MOSN, so an empty list is `[]`, never `null`.
pub fn graceful_close_frame(addresses: &[String], cluster_name: &str) -> Vec<u8> {
    let list: Vec<String> = addresses.iter().map(|a| go_quote(a)).collect();
    let payload = format!(
        "{{\"addresses\":[{}],\"cluster_name\":{}}}",
        list.join(","),
        go_quote(cluster_name)
    );
    frame(FLAG_GRACEFUL_CLOSE, payload.as_bytes())
}

/// `DecodeFromBuffer` (protocol.go:126-167): drains the frame from `buf` only on success.
pub fn decode_from_buffer(buf: &mut Vec<u8>) -> Result<Option<Msg>, DecodeError> {
    if buf.len() <= HEADER_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[6], buf[7]]) as usize;
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    if buf[0..2] != MAGIC {
        return Err(DecodeError::Magic);
    }
    let flag = buf[3];
    if !matches!(flag, FLAG_INIT | FLAG_RESPONSE | FLAG_GRACEFUL_CLOSE) {
        return Err(DecodeError::UnrecognizedFlag(flag));
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    let msg = unmarshal(flag, payload).map_err(DecodeError::Payload)?;
    buf.drain(..HEADER_LEN + len);
    Ok(Some(msg))
}

fn unmarshal(flag: u8, payload: &[u8]) -> Result<Msg, String> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let empty = Map::new();
    let obj = match &value {
        // A top-level null leaves the struct zero.
        Value::Null => &empty,
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value",
                kind(other)
            ))
        }
    };
    Ok(match flag {
        FLAG_INIT => Msg::Init(InitInfo {
            cluster_name: go_string(obj, "cluster_name")?,
            weight: go_int64(obj, "weight")?,
            host_name: go_string(obj, "host_name")?,
            credential_policy: go_string(obj, "credential_policy")?,
            credential: go_string(obj, "credential")?,
            extra: match field(obj, "extra") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m.clone()),
                Some(other) => return Err(type_error(other, "extra", "map[string]interface {}")),
            },
        }),
        FLAG_RESPONSE => Msg::Response(go_int64(obj, "status")?),
        _ => Msg::GracefulClose {
            addresses: match field(obj, "addresses") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::Null => Ok(String::new()),
                        Value::String(s) => Ok(s.clone()),
                        other => Err(type_error(other, "addresses", "string")),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => return Err(type_error(other, "addresses", "[]string")),
            },
            cluster_name: go_string(obj, "cluster_name")?,
        },
    })
}

/// Go matches a key exactly, else case-insensitively (ASCII folding is enough here).
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next_back()
    })
}

fn go_string(obj: &Map<String, Value>, name: &str) -> Result<String, String> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(type_error(other, name, "string")),
    }
}

fn go_int64(obj: &Map<String, Value>, name: &str) -> Result<i64, String> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            format!("json: cannot unmarshal number {n} into Go struct field .{name} of type int64")
        }),
        Some(other) => Err(type_error(other, name, "int64")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(v: &Value, name: &str, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field .{name} of type {go_type}",
        kind(v)
    )
}
