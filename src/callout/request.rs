//! Verifying and decoding one authorization request (protocol notes §2.4).
//!
//! Owns the rules a request must pass before anyone looks at its credentials: xkey opening
//! policy, JWT signature by the server key (`iss`), audience, claim type and version, `exp`,
//! `iss == server_id.id`, `sub` == the expected callout account, a valid `user_nkey`, and
//! `server_id.xkey` == the header key when encrypted. Pure: time and keys are arguments.
//! Must never log or return any part of the request JWT or the credentials in it.

use std::fmt;

use nkeys::KeyPairType;

use super::xkey::{XKeyBox, XKeyError};
use crate::authz::AuthRequest;
use crate::natsjwt::{self, AuthorizationRequest, Claims, JwtError, REQUEST_AUDIENCE};

/// Header carrying the server's public curve key when the request is sealed.
pub const XKEY_HEADER: &str = "Nats-Server-Xkey";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Sealed request, but no xkey seed is configured.
    EncryptedWithoutXkey,
    /// Plain request, but we require encryption (an xkey seed is configured).
    PlainWithXkey,
    /// Sealed box did not open.
    Xkey(XKeyError),
    /// The JWT failed to decode or verify.
    Jwt(JwtError),
    /// `aud` is not `nats-authorization-request`.
    Audience,
    /// `iss` is not `server_id.id`.
    ServerId,
    /// `sub` is not our callout account.
    Subject,
    /// `user_nkey` is not a valid user public key.
    UserNkey,
    /// `server_id.xkey` differs from the header key.
    XkeyMismatch,
}

impl RequestError {
    /// Reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::EncryptedWithoutXkey => "encrypted_without_xkey",
            RequestError::PlainWithXkey => "plain_with_xkey",
            RequestError::Xkey(e) => e.code(),
            RequestError::Jwt(e) => e.code(),
            RequestError::Audience => "request_audience",
            RequestError::ServerId => "request_server_id",
            RequestError::Subject => "request_subject",
            RequestError::UserNkey => "request_user_nkey",
            RequestError::XkeyMismatch => "request_xkey_mismatch",
        }
    }

    /// Whether the request had simply expired (counted apart from bad requests).
    pub fn is_expired(&self) -> bool {
        matches!(self, RequestError::Jwt(JwtError::Expired))
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for RequestError {}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    pub claims: Claims<AuthorizationRequest>,
    /// The server's curve key when the request was sealed (seal the response to it).
    pub server_xkey: Option<String>,
}

/// Open (if sealed) and verify a request payload.
///
/// `header_xkey` is the `Nats-Server-Xkey` header value, `xkey` our configured curve key,
/// `expected_sub` the callout account key the server names as `sub` (checked when given).
pub fn open_and_verify(
    payload: &[u8],
    header_xkey: Option<&str>,
    xkey: Option<&XKeyBox>,
    expected_sub: Option<&str>,
    now: u64,
) -> Result<VerifiedRequest, RequestError> {
    let opened;
    let token: &[u8] = match (header_xkey, xkey) {
        (Some(sender), Some(k)) => {
            opened = k.open(payload, sender).map_err(RequestError::Xkey)?;
            &opened
        }
        (Some(_), None) => return Err(RequestError::EncryptedWithoutXkey),
        (None, Some(_)) => return Err(RequestError::PlainWithXkey),
        (None, None) => payload,
    };
    let token = std::str::from_utf8(token).map_err(|_| RequestError::Jwt(JwtError::Malformed))?;
    let claims = verify(token.trim_end(), expected_sub, now)?;
    if let Some(h) = header_xkey {
        if claims.nats.server_id.xkey != h {
            return Err(RequestError::XkeyMismatch);
        }
    }
    Ok(VerifiedRequest {
        claims,
        server_xkey: header_xkey.map(str::to_string),
    })
}

/// Verify a plain request JWT (everything in §2.4 except the xkey parts).
pub fn verify(
    token: &str,
    expected_sub: Option<&str>,
    now: u64,
) -> Result<Claims<AuthorizationRequest>, RequestError> {
    let claims: Claims<AuthorizationRequest> =
        natsjwt::decode_at(token, now).map_err(RequestError::Jwt)?;
    if claims.nats.version != natsjwt::VERSION {
        return Err(RequestError::Jwt(JwtError::Version));
    }
    if claims.aud != REQUEST_AUDIENCE {
        return Err(RequestError::Audience);
    }
    if claims.iss != claims.nats.server_id.id {
        return Err(RequestError::ServerId);
    }
    if let Some(sub) = expected_sub {
        if claims.sub != sub {
            return Err(RequestError::Subject);
        }
    }
    if !natsjwt::is_public_key(&claims.nats.user_nkey, KeyPairType::User) {
        return Err(RequestError::UserNkey);
    }
    Ok(claims)
}

/// The decision's view of a verified request (credentials stay `Secret`).
pub fn to_auth_request(claims: &Claims<AuthorizationRequest>) -> AuthRequest {
    let n = &claims.nats;
    AuthRequest {
        server_id: n.server_id.id.clone(),
        server_name: n.server_id.name.clone(),
        server_version: n.server_id.version.clone(),
        user_nkey: n.user_nkey.clone(),
        client_host: n.client_info.host.clone(),
        client_id: n.client_info.id,
        client_name: n.client_info.name.clone(),
        client_kind: n.client_info.kind.clone(),
        client_type: n.client_info.client_type.clone(),
        auth_token: n.connect_opts.auth_token.clone(),
        user: Some(n.connect_opts.user.clone()).filter(|u| !u.is_empty()),
        pass: n.connect_opts.pass.clone(),
        expires: claims.exp,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::secret::Secret;
    use data_encoding::BASE64URL_NOPAD;
    use nkeys::{KeyPair, XKey};

    pub const NOW: u64 = 1_800_000_000;

    /// A request like the server's, signed by `server`.
    pub fn request_claims(server: &KeyPair, account: &str) -> Claims<AuthorizationRequest> {
        let mut n = AuthorizationRequest::default();
        n.server_id.id = server.public_key();
        n.server_id.name = "test".into();
        n.server_id.version = "2.15.1".into();
        n.user_nkey = KeyPair::new_user().public_key();
        n.client_info.host = "127.0.0.1".into();
        n.client_info.id = 7;
        n.client_info.kind = "Client".into();
        n.client_info.client_type = "nats".into();
        n.connect_opts.auth_token = Some(Secret::new("good"));
        n.connect_opts.protocol = 1;
        let mut c = Claims::new(account, NOW, n);
        c.aud = REQUEST_AUDIENCE.into();
        c.exp = NOW + 2;
        c
    }

    fn signed(server: &KeyPair, c: &mut Claims<AuthorizationRequest>) -> String {
        natsjwt::encode(c, server).unwrap()
    }

    #[test]
    fn a_good_request_verifies_and_converts() {
        let server = KeyPair::new_server();
        let acc = KeyPair::new_account().public_key();
        let mut c = request_claims(&server, &acc);
        let t = signed(&server, &mut c);
        let v = open_and_verify(t.as_bytes(), None, None, Some(&acc), NOW).unwrap();
        assert!(v.server_xkey.is_none());
        let r = to_auth_request(&v.claims);
        assert_eq!(r.bearer_token(), Some("good"));
        assert_eq!(r.user_nkey, c.nats.user_nkey);
        assert_eq!(r.server_id, server.public_key());
        assert_eq!(r.client_id, 7);
        assert_eq!(r.expires, NOW + 2);
        assert_eq!(r.user, None);
    }

    #[test]
    fn adversarial_requests_are_refused() {
        let server = KeyPair::new_server();
        let acc = KeyPair::new_account().public_key();
        type Mutate = fn(&mut Claims<AuthorizationRequest>);
        let cases: Vec<(Mutate, RequestError)> = vec![
            (|c| c.aud = "nats".into(), RequestError::Audience),
            (|c| c.aud.clear(), RequestError::Audience),
            (
                |c| c.nats.server_id.id = KeyPair::new_server().public_key(),
                RequestError::ServerId,
            ),
            (
                |c| c.sub = KeyPair::new_account().public_key(),
                RequestError::Subject,
            ),
            (
                |c| c.nats.user_nkey = KeyPair::new_account().public_key(),
                RequestError::UserNkey,
            ),
            (|c| c.nats.user_nkey.clear(), RequestError::UserNkey),
            (|c| c.exp = NOW - 1, RequestError::Jwt(JwtError::Expired)),
        ];
        for (mutate, want) in cases {
            let mut c = request_claims(&server, &acc);
            mutate(&mut c);
            let t = signed(&server, &mut c);
            assert_eq!(
                open_and_verify(t.as_bytes(), None, None, Some(&acc), NOW).unwrap_err(),
                want
            );
        }
        // Version 1 is not a callout request.
        let mut c = request_claims(&server, &acc);
        c.iss = server.public_key();
        c.nats.claim_type = "authorization_request".into();
        c.nats.version = 1;
        let payload = BASE64URL_NOPAD.encode(&serde_json::to_vec(&c).unwrap());
        let sig = server.sign(payload.as_bytes()).unwrap();
        let t = format!(
            "{}.{payload}.{}",
            natsjwt::HEADER_B64,
            BASE64URL_NOPAD.encode(&sig)
        );
        assert_eq!(
            verify(&t, Some(&acc), NOW).unwrap_err(),
            RequestError::Jwt(JwtError::Version)
        );
        // Signed by a different server key than `iss` claims.
        let mut c = request_claims(&server, &acc);
        let good = signed(&server, &mut c);
        let (input, _) = good.rsplit_once('.').unwrap();
        let sig = KeyPair::new_server().sign(input.as_bytes()).unwrap();
        let forged = format!("{input}.{}", BASE64URL_NOPAD.encode(&sig));
        assert_eq!(
            verify(&forged, Some(&acc), NOW).unwrap_err(),
            RequestError::Jwt(JwtError::Signature)
        );
        // Signed by an account key (not a server).
        let mut c = request_claims(&server, &acc);
        c.iss = acc.clone();
        assert!(natsjwt::encode(&mut c, &KeyPair::new_account()).is_err());
    }

    #[test]
    fn xkey_policy() {
        let server = KeyPair::new_server();
        let server_x = XKey::new();
        let service_x = XKey::new();
        let b = XKeyBox::from_seed(&service_x.seed().unwrap()).unwrap();
        let acc = KeyPair::new_account().public_key();
        let mut c = request_claims(&server, &acc);
        c.nats.server_id.xkey = server_x.public_key();
        let t = signed(&server, &mut c);
        let sealed = server_x.seal(t.as_bytes(), &service_x).unwrap();
        let hdr = server_x.public_key();

        let v = open_and_verify(&sealed, Some(&hdr), Some(&b), Some(&acc), NOW).unwrap();
        assert_eq!(v.server_xkey.as_deref(), Some(hdr.as_str()));
        assert_eq!(
            open_and_verify(&sealed, Some(&hdr), None, Some(&acc), NOW).unwrap_err(),
            RequestError::EncryptedWithoutXkey
        );
        assert_eq!(
            open_and_verify(t.as_bytes(), None, Some(&b), Some(&acc), NOW).unwrap_err(),
            RequestError::PlainWithXkey
        );
        // Header names another key than the one that sealed.
        let other = XKey::new().public_key();
        assert_eq!(
            open_and_verify(&sealed, Some(&other), Some(&b), Some(&acc), NOW).unwrap_err(),
            RequestError::Xkey(XKeyError::Open)
        );
        // Sealed correctly but the JWT names a different server xkey.
        let mut c2 = request_claims(&server, &acc);
        c2.nats.server_id.xkey = XKey::new().public_key();
        let t2 = signed(&server, &mut c2);
        let sealed2 = server_x.seal(t2.as_bytes(), &service_x).unwrap();
        assert_eq!(
            open_and_verify(&sealed2, Some(&hdr), Some(&b), Some(&acc), NOW).unwrap_err(),
            RequestError::XkeyMismatch
        );
    }
}
