//! Typed `[params]`: a strategy declares its params as a serde struct and gets them, or an
//! error that names the key at fault, from one call in [`crate::Strategy::new`].
//!
//! The error starts with `params.<key>: ` (`params.k: invalid type: string "ten", expected
//! usize`), which the host maps to the line of that key in the job file, so `recd validate`
//! and a reload point at `k = "ten"` itself. Positions inside the JSON the host hands over
//! mean nothing to the job's author and are left out.
//!
//! ```
//! use recd_plugin_api::params;
//!
//! #[derive(serde::Deserialize, Debug)]
//! #[serde(deny_unknown_fields)]
//! struct Params {
//!     k: usize,
//!     #[serde(default)]
//!     half_life_days: Option<f64>,
//! }
//!
//! let p: Params = params::parse(r#"{"k": 10}"#).unwrap();
//! assert_eq!((p.k, p.half_life_days), (10, None));
//! let err = params::parse::<Params>(r#"{"k": "ten"}"#).unwrap_err();
//! assert_eq!(err.message, r#"params.k: invalid type: string "ten", expected usize"#);
//! let err = params::parse::<Params>(r#"{"k": 1, "kk": 2}"#).unwrap_err();
//! assert!(err.message.starts_with("params.kk: unknown field `kk`"), "{}", err.message);
//! ```

use serde::de::DeserializeOwned;

use crate::PluginError;

/// The job's `[params]` (the JSON object `new` receives) as `P`; an error names the key.
pub fn parse<P: DeserializeOwned>(params_json: &str) -> Result<P, PluginError> {
    let mut de = serde_json::Deserializer::from_str(params_json);
    let parsed: Result<P, _> = serde_path_to_error::deserialize(&mut de);
    let parsed = parsed.map_err(|e| {
        let path = e.path().to_string();
        let message = without_position(&e.into_inner().to_string());
        let key = if path == "." { unknown_field(&message) } else { Some(path) };
        match key {
            Some(key) => PluginError::params(format!("params.{key}: {message}")),
            None => PluginError::params(format!("params: {message}")),
        }
    })?;
    // Trailing text after the object is an error too (the host never sends any).
    de.end().map_err(|e| PluginError::params(format!("params: {}", without_position(&e.to_string()))))?;
    Ok(parsed)
}

/// serde_json's message without its ` at line L column C` (a position in JSON the job's
/// author never wrote).
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => message[..at].to_string(),
        _ => message.to_string(),
    }
}

/// The key a `deny_unknown_fields` refusal names: "unknown field `kk`, expected ...".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields are read only through Debug in the assertions")]
    struct Params {
        k: usize,
        inner: Option<Inner>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code, reason = "fields are read only through Debug in the assertions")]
    struct Inner {
        weights: Vec<f64>,
    }

    #[test]
    fn errors_name_the_key_and_no_json_position() {
        let cases = [
            (r#"{"k": "ten"}"#, r#"params.k: invalid type: string "ten", expected usize"#),
            (r#"{"k": -1}"#, "params.k: invalid value: integer `-1`, expected usize"),
            (r#"{}"#, "params: missing field `k`"),
            (
                r#"{"k": 1, "inner": {"weights": [1, "x"]}}"#,
                r#"params.inner.weights[1]: invalid type: string "x", expected f64"#,
            ),
            (r#"{"k": 1, "zz": 0}"#, "params.zz: unknown field `zz`, expected `k` or `inner`"),
        ];
        for (json, want) in cases {
            let err = parse::<Params>(json).unwrap_err();
            assert_eq!((err.code, err.message.as_str()), (crate::abi::code::INVALID_PARAMS, want), "{json}");
        }
        assert_eq!(parse::<Params>(r#"{"k": 3}"#).map(|p| p.k), Ok(3));
    }
}
