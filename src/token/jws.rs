//! Strict compact-JWS parsing: trims ASCII whitespace, caps the size before decoding, requires
//! exactly three unpadded base64url segments and JSON *objects* for header and payload.
//! It never verifies anything and never logs or echoes token bytes.

use data_encoding::BASE64URL_NOPAD;
use serde::Deserialize;

use super::TokenError;

/// Largest token (after trimming) we look at, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The JOSE header fields we read. Unknown fields are ignored, except `crit`, which is
/// rejected by the validator (we implement no extension).
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub crit: Option<serde::de::IgnoredAny>,
}

/// A syntactically valid compact JWS, not yet verified.
#[derive(Debug)]
pub struct Jws<'a> {
    pub header: Header,
    /// Decoded payload bytes (a JSON object, checked by its first byte).
    pub payload: Vec<u8>,
    /// `b64(header) "." b64(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Parses a compact JWS. Every failure is [`TokenError::Malformed`].
pub fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let bytes = token.as_bytes();
    let first = bytes
        .iter()
        .position(|&b| b == b'.')
        .ok_or(TokenError::Malformed)?;
    let second = first
        + 1
        + bytes[first + 1..]
            .iter()
            .position(|&b| b == b'.')
            .ok_or(TokenError::Malformed)?;
    let (h64, p64, s64) = (
        &bytes[..first],
        &bytes[first + 1..second],
        &bytes[second + 1..],
    );
    if s64.contains(&b'.') || h64.is_empty() || p64.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header_bytes = b64(h64)?;
    let payload = b64(p64)?;
    let signature = b64(s64)?;
    if !is_object(&header_bytes) || !is_object(&payload) {
        return Err(TokenError::Malformed);
    }
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
    Ok(Jws {
        header,
        payload,
        signing_input: &bytes[..second],
        signature,
    })
}

fn b64(s: &[u8]) -> Result<Vec<u8>, TokenError> {
    // BASE64URL_NOPAD rejects padding, the standard alphabet, and non-zero trailing bits, so
    // each byte string has exactly one accepted encoding.
    BASE64URL_NOPAD.decode(s).map_err(|_| TokenError::Malformed)
}

/// A JSON text whose first non-whitespace byte opens an object. serde's derived structs also
/// accept arrays, which JOSE does not allow.
pub fn is_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        BASE64URL_NOPAD.encode(s.as_bytes())
    }

    fn tok(h: &str, p: &str, sig: &[u8]) -> String {
        format!("{}.{}.{}", enc(h), enc(p), BASE64URL_NOPAD.encode(sig))
    }

    #[test]
    fn parses_a_well_formed_token_and_trims_whitespace() {
        let t = format!(
            " \n{}\r\n",
            tok(r#"{"alg":"RS256","kid":"k"}"#, "{}", b"sig")
        );
        let j = parse(&t).unwrap();
        assert_eq!(j.header.alg, "RS256");
        assert_eq!(j.header.kid.as_deref(), Some("k"));
        assert_eq!(j.signature, b"sig");
        assert_eq!(j.payload, b"{}");
        assert!(t
            .trim()
            .starts_with(std::str::from_utf8(j.signing_input).unwrap()));
    }

    #[test]
    fn rejects_bad_shapes() {
        let good = tok(r#"{"alg":"RS256"}"#, "{}", b"s");
        let cases = vec![
            String::new(),
            "a.b".to_string(),
            format!("{good}.x"),
            format!("{good}="),
            good.replace('.', ".."),
            tok(r#"["RS256"]"#, "{}", b"s"),
            tok(r#"{"alg":"RS256"}"#, "[1]", b"s"),
            tok(r#"{"alg":"RS256"}"#, "null", b"s"),
            tok(r#"{"kid":"x"}"#, "{}", b"s"),
            tok(r#"{"alg":1}"#, "{}", b"s"),
            tok(r#"{"alg":"RS256","alg":"none"}"#, "{}", b"s"),
            format!("{}.{}.{}", enc(r#"{"alg":"RS256"}"#), "e30=", "cw"),
            format!("{}.{}.{}", enc(r#"{"alg":"RS256"}"#), "e3+", "cw"),
            format!("{}..{}", enc(r#"{"alg":"RS256"}"#), "cw"),
            format!("{{\"alg\":\"RS256\"}}.{}.cw", enc("{}")),
        ];
        for c in cases {
            assert_eq!(parse(&c).unwrap_err(), TokenError::Malformed, "{c}");
        }
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "cw" decodes to 's'; "cx" has non-zero trailing bits and must not decode to 's' too.
        let h = enc(r#"{"alg":"RS256"}"#);
        assert!(parse(&format!("{h}.{}.cw", enc("{}"))).is_ok());
        assert_eq!(
            parse(&format!("{h}.{}.cx", enc("{}"))).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn size_limit_is_checked_before_decoding() {
        let big = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256"}"#),
            "A".repeat(MAX_TOKEN_BYTES),
            "cw"
        );
        assert_eq!(parse(&big).unwrap_err(), TokenError::Malformed);
        let p = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES / 2));
        assert!(parse(&tok(r#"{"alg":"RS256"}"#, &p, b"s")).is_ok());
    }
}
