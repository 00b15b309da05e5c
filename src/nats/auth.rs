//! Client credentials for CONNECT: user+password, token, nkey seed (signs the server nonce) and
//! `.creds` files (user JWT + seed, re-read on every connect).
//!
//! Owns the CONNECT JSON. Must never put a secret into an error, a log line or a `Debug` output.

use std::path::PathBuf;

use crate::secret::Secret;

use super::Error;

/// How the client authenticates.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// An nkey user seed (`SU…`): the CONNECT carries the public key and the signed nonce.
    NkeySeed(Secret),
    /// A `.creds` file holding a user JWT and its seed; read again on every connect.
    CredsFile(PathBuf),
}

/// Builds the CONNECT options for `auth`, signing `nonce` when the method needs it.
pub(crate) fn connect_json(
    auth: &Auth,
    nonce: Option<&str>,
    name: &str,
    tls_required: bool,
) -> Result<serde_json::Value, Error> {
    let mut v = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": tls_required,
        "headers": true,
        "no_responders": true,
        "protocol": 1,
        "lang": "rust-sync",
        "version": env!("CARGO_PKG_VERSION"),
        "name": name,
    });
    let m = v.as_object_mut().expect("object literal");
    match auth {
        Auth::None => {}
        Auth::UserPassword { user, password } => {
            m.insert("user".into(), user.as_str().into());
            m.insert("pass".into(), password.expose().into());
        }
        Auth::Token(t) => {
            m.insert("auth_token".into(), t.expose().into());
        }
        Auth::NkeySeed(seed) => {
            let kp = nkeys::KeyPair::from_seed(seed.expose().trim())
                .map_err(|_| Error::Auth("invalid nkey seed"))?;
            m.insert("nkey".into(), kp.public_key().into());
            m.insert("sig".into(), sign_nonce(&kp, nonce)?.into());
        }
        Auth::CredsFile(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|_| Error::Auth("creds file unreadable"))?;
            let (jwt, seed) = parse_creds(&text)?;
            let kp = nkeys::KeyPair::from_seed(seed.expose())
                .map_err(|_| Error::Auth("invalid seed in creds file"))?;
            m.insert("jwt".into(), jwt.expose().into());
            m.insert("sig".into(), sign_nonce(&kp, nonce)?.into());
        }
    }
    Ok(v)
}

fn sign_nonce(kp: &nkeys::KeyPair, nonce: Option<&str>) -> Result<String, Error> {
    let nonce = nonce.ok_or(Error::Auth("server sent no nonce to sign"))?;
    let sig = kp
        .sign(nonce.as_bytes())
        .map_err(|_| Error::Auth("nonce signing failed"))?;
    Ok(data_encoding::BASE64URL_NOPAD.encode(&sig))
}

/// Extracts the user JWT and the seed from a `.creds` file: the first line after each
/// `-----BEGIN ...-----` marker (the JWT block comes first, then the seed block).
pub(crate) fn parse_creds(text: &str) -> Result<(Secret, Secret), Error> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let l = line.trim();
        if l.starts_with("-----BEGIN") || l.starts_with("------BEGIN") {
            let body = lines
                .by_ref()
                .map(str::trim)
                .find(|x| !x.is_empty())
                .ok_or(Error::Auth("malformed creds file"))?;
            if body.starts_with("---") {
                return Err(Error::Auth("malformed creds file"));
            }
            blocks.push(body.to_string());
        }
    }
    let jwt = blocks
        .iter()
        .find(|b| b.starts_with("eyJ"))
        .ok_or(Error::Auth("no user JWT in creds file"))?;
    let seed = blocks
        .iter()
        .find(|b| b.starts_with("SU"))
        .ok_or(Error::Auth("no user seed in creds file"))?;
    Ok((Secret::new(jwt.clone()), Secret::new(seed.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: &str = "-----BEGIN NATS USER JWT-----\neyJhbGciOi.xx.yy\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\nSUSEED\n------END USER NKEY SEED------\n";

    #[test]
    fn creds_parsing() {
        let (jwt, seed) = parse_creds(CREDS).unwrap();
        assert_eq!(jwt.expose(), "eyJhbGciOi.xx.yy");
        assert_eq!(seed.expose(), "SUSEED");
        assert!(parse_creds("-----BEGIN NATS USER JWT-----\neyJ\n").is_err());
        assert!(parse_creds("").is_err());
        assert!(parse_creds("-----BEGIN X-----\n------END X------\n").is_err());
    }

    #[test]
    fn nkey_signs_the_nonce_and_never_leaks_the_seed() {
        let kp = nkeys::KeyPair::new_user();
        let seed = Secret::new(kp.seed().unwrap());
        let v = connect_json(&Auth::NkeySeed(seed.clone()), Some("NONCE"), "n", false).unwrap();
        assert_eq!(v["nkey"], kp.public_key());
        let sig = data_encoding::BASE64URL_NOPAD
            .decode(v["sig"].as_str().unwrap().as_bytes())
            .unwrap();
        kp.verify(b"NONCE", &sig).unwrap();
        assert!(kp.verify(b"OTHER", &sig).is_err());
        assert!(!v.to_string().contains(seed.expose()));
        // no nonce: refuse rather than send an unsigned CONNECT
        let e = connect_json(&Auth::NkeySeed(seed.clone()), None, "n", false).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(seed.expose()));
        let bad = Auth::NkeySeed(Secret::new("SUnotaseed"));
        let e = connect_json(&bad, Some("x"), "n", false).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("SUnotaseed"));
    }

    #[test]
    fn connect_fields() {
        let a = Auth::UserPassword {
            user: "u".into(),
            password: Secret::new("p"),
        };
        let v = connect_json(&a, None, "me", true).unwrap();
        assert_eq!(
            (
                &v["user"],
                &v["pass"],
                &v["headers"],
                &v["no_responders"],
                &v["verbose"],
                &v["protocol"],
                &v["lang"],
                &v["name"],
                &v["tls_required"]
            ),
            (
                &"u".into(),
                &"p".into(),
                &true.into(),
                &true.into(),
                &false.into(),
                &1.into(),
                &"rust-sync".into(),
                &"me".into(),
                &true.into()
            )
        );
        let v = connect_json(&Auth::Token(Secret::new("t")), None, "", false).unwrap();
        assert_eq!(v["auth_token"], "t");
        assert!(v.get("user").is_none());
    }
}
