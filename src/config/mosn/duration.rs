//! Go's `time.ParseDuration` and MOSN's `api.DurationConfig` JSON form, in milliseconds. Pure.

use serde_json::Value;

/// MOSN's `api.DurationConfig` (`time.ParseDuration` of the JSON text with quotes trimmed), in
/// milliseconds rounded (a non-zero duration under 1 ms is 1 ms).
pub fn mosn_duration_ms(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => go_duration_ms(s),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(0),
        Value::Number(n) => Err(format!("{n}: missing unit in duration (MOSN wants a Go duration such as \"{n}ms\" or \"{n}s\")")),
        other => Err(format!("{other}: expected a Go duration string such as \"8s\"")),
    }
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+` or `0`.
pub fn go_duration_ms(text: &str) -> Result<u64, String> {
    let invalid =
        || format!("{text:?}: invalid duration (Go syntax: \"300ms\", \"8s\", \"1m30s\")");
    let mut s = text;
    let negative = s.starts_with('-');
    if negative || s.starts_with('+') {
        s = &s[1..];
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total_ns = 0f64;
    while !s.is_empty() {
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let number = &s[..num_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        s = &s[num_end..];
        let unit_end = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let ns_per = match &s[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("{text:?}: missing unit in duration")),
            unit => return Err(format!("{text:?}: unknown unit {unit:?} in duration")),
        };
        total_ns += value * ns_per;
        s = &s[unit_end..];
    }
    if negative && total_ns > 0.0 {
        return Err(format!("{text:?}: a negative duration"));
    }
    let ms = (total_ns / 1e6).round();
    if ms > 9.0e15 {
        return Err(format!("{text:?}: too long"));
    }
    Ok(if ms < 1.0 && total_ns > 0.0 {
        1
    } else {
        ms as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_parse_as_go_and_mosn_do() {
        for (text, ms) in [
            ("8s", 8_000),
            ("300ms", 300),
            ("1m30s", 90_000),
            ("1.5h", 5_400_000),
            ("0", 0),
            ("15s", 15_000),
            (".5s", 500),
            ("1us", 1),
            ("2h45m", 9_900_000),
        ] {
            assert_eq!(go_duration_ms(text), Ok(ms), "{text}");
        }
        for bad in ["8", "", "s", "8x", "-1s", "1..5s", "null"] {
            assert!(go_duration_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(mosn_duration_ms(&json!(0)), Ok(0));
        assert!(mosn_duration_ms(&json!(8000))
            .unwrap_err()
            .contains("missing unit"));
        assert!(mosn_duration_ms(&Value::Null).is_err());
    }
}
