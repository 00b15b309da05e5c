//! NATS JWTs (`ed25519-nkey`): typed claims, encode + sign, decode + verify.
//!
//! Owns the byte format of every NATS JWT the project reads or writes: the fixed header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`, base64url without padding, the Ed25519 signature by
//! the `iss` nkey (over `header.payload` for version 2, over the payload part only for legacy
//! version 1), the `jti` (base32 without padding of SHA-512/256 of the claims JSON with an empty
//! `jti`), issuer-prefix rules and `exp`/`nbf` checks against a time the caller gives.
//!
//! Pure: no I/O, no logging, time comes from the caller. It must never log or put into an
//! error a token, a seed or any part of a JWT.

use std::fmt;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::{KeyPair, KeyPairType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::permissions::{Permissions, ResponsePermission, SubjectRules};
use crate::secret::Secret;

/// base64url of `{"typ":"JWT","alg":"ed25519-nkey"}`, the only header we write.
pub const HEADER_B64: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ";
/// The claim format version we write (and the only one the callout accepts).
pub const VERSION: u32 = 2;
/// Largest token we decode (the Go library's limit).
pub const MAX_TOKEN_LEN: usize = 1 << 20;
/// `aud` of every authorization request.
pub const REQUEST_AUDIENCE: &str = "nats-authorization-request";
/// Per-user limits value meaning "no limit".
pub const NO_LIMIT: i64 = -1;

/// Why a JWT could not be encoded or was refused. Carries no token material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three dot-separated parts, or too large.
    Malformed,
    /// A part is not base64url without padding.
    Base64,
    /// Header is not `typ: JWT` with `alg: ed25519-nkey` (or legacy `ed25519`).
    Header,
    /// Claims JSON does not parse into the expected shape.
    Json,
    /// `nats.type` is not the expected claim type.
    WrongType,
    /// `nats.version` missing (0) or newer than 2.
    Version,
    /// `iss` is not a valid public nkey of an allowed kind.
    Issuer,
    /// Signature does not verify.
    Signature,
    /// `now > exp`.
    Expired,
    /// `nbf > now`.
    NotYetValid,
    /// Encoding failed: the signing key cannot issue this claim type, or has no seed.
    Signer,
}

impl JwtError {
    /// Short reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed => "jwt_malformed",
            JwtError::Base64 => "jwt_base64",
            JwtError::Header => "jwt_header",
            JwtError::Json => "jwt_json",
            JwtError::WrongType => "jwt_wrong_type",
            JwtError::Version => "jwt_version",
            JwtError::Issuer => "jwt_issuer",
            JwtError::Signature => "jwt_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::Signer => "jwt_signer",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for JwtError {}

/// The `nats` section of one claim type.
pub trait ClaimBody: Serialize + DeserializeOwned {
    /// `nats.type`.
    const TYPE: &'static str;
    /// Which nkey kinds may appear as `iss`.
    fn issuer_allowed(kind: &KeyPairType) -> bool;
    /// The `nats.type` found in a decoded token.
    fn claim_type(&self) -> &str;
    /// The `nats.version` found in a decoded token.
    fn claim_version(&self) -> u32;
    /// Set `nats.type` and `nats.version` to what we write (`TYPE`, 2).
    fn stamp(&mut self);
}

/// Standard JWT claims plus the typed `nats` section. Field order is the Go library's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims<B> {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nbf: u64,
    #[serde(default)]
    pub sub: String,
    pub nats: B,
}

impl<B: ClaimBody> Claims<B> {
    /// New claims about `sub`, issued at `iat` (Unix seconds); `iss` is set when signing.
    pub fn new(sub: impl Into<String>, iat: u64, nats: B) -> Self {
        Claims {
            aud: String::new(),
            exp: 0,
            jti: String::new(),
            iat,
            iss: String::new(),
            name: String::new(),
            nbf: 0,
            sub: sub.into(),
            nats,
        }
    }
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Length, base32, checksum and prefix, as Go's nkeys checks a public key; the point itself is
/// not decompressed (that costs about 4 µs and happens anyway when a key verifies).
fn key_kind(public: &str) -> Option<KeyPairType> {
    nkeys::from_public_key(public)
        .ok()
        .map(|(prefix, _)| KeyPairType::from(prefix))
}

/// Whether `public` is a valid public nkey (checksum included) of kind `kind`.
pub fn is_public_key(public: &str, kind: KeyPairType) -> bool {
    key_kind(public).is_some_and(|k| k == kind)
}

/// What can sign a JWT: an nkey [`KeyPair`] (ed25519-dalek), or a [`FastSigner`] made from one.
pub trait JwtSigner {
    fn kind(&self) -> KeyPairType;
    /// The encoded public key (`iss`).
    fn public(&self) -> String;
    /// The 64-byte Ed25519 signature of `msg`.
    fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError>;
}

impl JwtSigner for KeyPair {
    fn kind(&self) -> KeyPairType {
        self.key_pair_type()
    }
    fn public(&self) -> String {
        self.public_key()
    }
    fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        self.sign(msg).map_err(|_| JwtError::Signer)
    }
}

/// The same seed as a ring Ed25519 key, made once (the hot path signs two JWTs per decision).
/// ring signs about a third faster than ed25519-dalek on x86-64; Ed25519 is deterministic, so
/// the signatures are byte-identical to the nkey's.
pub struct FastSigner {
    kind: KeyPairType,
    public: String,
    key: ring::signature::Ed25519KeyPair,
}

impl fmt::Debug for FastSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSigner")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl FastSigner {
    /// From a key pair that holds a seed; fails without one.
    pub fn new(kp: &KeyPair) -> Result<Self, JwtError> {
        let seed = Secret::new(kp.seed().map_err(|_| JwtError::Signer)?);
        let (_, raw) = nkeys::decode_seed(seed.expose()).map_err(|_| JwtError::Signer)?;
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&raw)
            .map_err(|_| JwtError::Signer)?;
        let public = kp.public_key();
        let same = KeyPair::from_public_key(&public).ok().and_then(|p| {
            p.verify(b"fast-signer", key.sign(b"fast-signer").as_ref())
                .ok()
        });
        if same.is_none() {
            return Err(JwtError::Signer);
        }
        Ok(FastSigner {
            kind: kp.key_pair_type(),
            public,
            key,
        })
    }
}

impl JwtSigner for FastSigner {
    fn kind(&self) -> KeyPairType {
        self.kind.clone()
    }
    fn public(&self) -> String {
        self.public.clone()
    }
    fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        Ok(self.key.sign(msg).as_ref().to_vec())
    }
}

/// Sign `claims` with `signer`: sets `iss`, `nats.type`/`version` (2) and `jti`, and returns the
/// encoded token. `iat`, `exp`, `sub`, `aud` and `name` are the caller's.
pub fn encode<B: ClaimBody, S: JwtSigner + ?Sized>(
    claims: &mut Claims<B>,
    signer: &S,
) -> Result<String, JwtError> {
    if !B::issuer_allowed(&signer.kind()) {
        return Err(JwtError::Signer);
    }
    claims.iss = signer.public();
    claims.nats.stamp();
    claims.jti.clear();
    let unhashed = serde_json::to_vec(&*claims).map_err(|_| JwtError::Json)?;
    let digest = ring::digest::digest(&ring::digest::SHA512_256, &unhashed);
    claims.jti = BASE32_NOPAD.encode(digest.as_ref());
    let payload = match with_jti(&unhashed, claims) {
        Some(p) => p,
        None => serde_json::to_vec(&*claims).map_err(|_| JwtError::Json)?,
    };

    let mut token = String::with_capacity(
        HEADER_B64.len() + 2 + BASE64URL_NOPAD.encode_len(payload.len()) + 86,
    );
    token.push_str(HEADER_B64);
    token.push('.');
    BASE64URL_NOPAD.encode_append(&payload, &mut token);
    let sig = signer.sign_bytes(token.as_bytes())?;
    token.push('.');
    BASE64URL_NOPAD.encode_append(&sig, &mut token);
    Ok(token)
}

/// The claims JSON with `jti` inserted where serde puts it (after `aud` and `exp`, before
/// `iat`), from the serialisation without `jti`: saves serialising the claims a second time.
/// `None` if the text is not laid out as expected (the caller then serialises again).
fn with_jti<B: ClaimBody>(unhashed: &[u8], claims: &Claims<B>) -> Option<Vec<u8>> {
    let mut at = 1;
    if !claims.aud.is_empty() {
        at += "\"aud\":".len() + serde_json::to_string(&claims.aud).ok()?.len() + 1;
    }
    if claims.exp != 0 {
        at += "\"exp\":".len() + claims.exp.to_string().len() + 1;
    }
    if unhashed.first() != Some(&b'{') || !unhashed.get(at..)?.starts_with(b"\"iat\":") {
        return None;
    }
    let mut out = Vec::with_capacity(unhashed.len() + claims.jti.len() + 9);
    out.extend_from_slice(&unhashed[..at]);
    out.extend_from_slice(b"\"jti\":");
    serde_json::to_writer(&mut out, &claims.jti).ok()?;
    out.push(b',');
    out.extend_from_slice(&unhashed[at..]);
    Some(out)
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    typ: String,
    #[serde(default)]
    alg: String,
}

/// Decode and verify a token at `now` (Unix seconds): structure, header, claim type, version,
/// issuer kind, signature, `exp` and `nbf` (whole seconds: expired iff `now > exp`; early iff
/// `nbf > now`). Claim-specific checks (`aud`, `sub`, …) are the caller's.
pub fn decode_at<B: ClaimBody>(token: &str, now: u64) -> Result<Claims<B>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_bytes = b64(h)?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Header)?;
    if !header.typ.eq_ignore_ascii_case("JWT")
        || !(header.alg == "ed25519-nkey" || header.alg == "ed25519")
    {
        return Err(JwtError::Header);
    }
    let payload = b64(p)?;
    let sig = b64(s)?;
    let claims: Claims<B> = serde_json::from_slice(&payload).map_err(|_| JwtError::Json)?;
    if claims.nats.claim_type() != B::TYPE {
        return Err(JwtError::WrongType);
    }
    let version = claims.nats.claim_version();
    if version == 0 || version > VERSION {
        return Err(JwtError::Version);
    }
    let issuer = KeyPair::from_public_key(&claims.iss).map_err(|_| JwtError::Issuer)?;
    if !B::issuer_allowed(&issuer.key_pair_type()) {
        return Err(JwtError::Issuer);
    }
    // Version 2 signs "header.payload"; legacy version 1 signed the payload part only.
    let signed = if version >= 2 {
        &token[..h.len() + 1 + p.len()]
    } else {
        p
    };
    issuer
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    if claims.exp != 0 && now > claims.exp {
        return Err(JwtError::Expired);
    }
    if claims.nbf != 0 && claims.nbf > now {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    BASE64URL_NOPAD
        .decode(part.as_bytes())
        .map_err(|_| JwtError::Base64)
}

macro_rules! claim_body {
    ($ty:ty, $name:literal, $($kind:ident)|+) => {
        impl ClaimBody for $ty {
            const TYPE: &'static str = $name;
            fn issuer_allowed(kind: &KeyPairType) -> bool {
                matches!(kind, $(KeyPairType::$kind)|+)
            }
            fn claim_type(&self) -> &str {
                &self.claim_type
            }
            fn claim_version(&self) -> u32 {
                self.version
            }
            fn stamp(&mut self) {
                self.claim_type.clear();
                self.claim_type.push_str($name);
                self.version = VERSION;
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Authorization request (server → callout)

/// `nats.server_id` of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerId {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

/// `nats.client_info` of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// Raw auth user; older servers (< 2.10.28) put the raw token here, so it is a secret.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secret")]
    pub user: Option<Secret>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name_tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub client_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mqtt_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
}

/// `nats.connect_opts` of a request (the client's CONNECT).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectOpts {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secret")]
    pub jwt: Option<Secret>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nkey: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secret")]
    pub auth_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_secret")]
    pub pass: Option<Secret>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lang: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default)]
    pub protocol: i64,
}

/// `nats.client_tls` of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientTls {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cipher: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified_chains: Vec<Vec<String>>,
}

/// `nats` of an `authorization_request` (issued by a server key, `N…`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    #[serde(default)]
    pub server_id: ServerId,
    #[serde(default)]
    pub user_nkey: String,
    #[serde(default)]
    pub client_info: ClientInfo,
    #[serde(default)]
    pub connect_opts: ConnectOpts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_nonce: String,
    #[serde(default, rename = "type")]
    pub claim_type: String,
    #[serde(default)]
    pub version: u32,
}
claim_body!(AuthorizationRequest, "authorization_request", Server);

// ---------------------------------------------------------------------------------------------
// Authorization response (callout → server)

/// `nats` of an `authorization_response`: exactly one of `jwt` / `error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationResponse {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
    #[serde(default, rename = "type")]
    pub claim_type: String,
    #[serde(default)]
    pub version: u32,
}
claim_body!(AuthorizationResponse, "authorization_response", Account);

// ---------------------------------------------------------------------------------------------
// User

/// `nats` of a `user` JWT. `Default` gives no permissions and no limits (-1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "pub", default)]
    pub publish: SubjectRules,
    #[serde(rename = "sub", default)]
    pub subscribe: SubjectRules,
    #[serde(rename = "resp", default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<ResponsePermission>,
    #[serde(default = "no_limit")]
    pub subs: i64,
    #[serde(default = "no_limit")]
    pub data: i64,
    #[serde(default = "no_limit")]
    pub payload: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bearer_token: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
    #[serde(default, rename = "type")]
    pub claim_type: String,
    #[serde(default)]
    pub version: u32,
}
claim_body!(User, "user", Account);

fn no_limit() -> i64 {
    NO_LIMIT
}

impl Default for User {
    fn default() -> Self {
        User {
            publish: SubjectRules::default(),
            subscribe: SubjectRules::default(),
            responses: None,
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            tags: Vec::new(),
            bearer_token: false,
            issuer_account: String::new(),
            claim_type: "user".into(),
            version: VERSION,
        }
    }
}

impl User {
    /// A user with these permissions and no per-user limits.
    pub fn with_permissions(p: Permissions) -> Self {
        User {
            publish: p.publish,
            subscribe: p.subscribe,
            responses: p.responses,
            ..User::default()
        }
    }

    /// A bearer user that may neither publish nor subscribe (a sentinel for operator mode).
    pub fn deny_all_bearer() -> Self {
        let deny = SubjectRules {
            allow: Vec::new(),
            deny: vec![">".into()],
        };
        User {
            publish: deny.clone(),
            subscribe: deny,
            bearer_token: true,
            ..User::default()
        }
    }

    /// The permission part.
    pub fn permissions(&self) -> Permissions {
        Permissions {
            publish: self.publish.clone(),
            subscribe: self.subscribe.clone(),
            responses: self.responses,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Account

/// `nats.authorization` of an account JWT: the callout (external authorization) settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExternalAuthorization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

/// `nats.limits` of an account JWT (operator limits); `Default` is "no limits".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            imports: NO_LIMIT,
            exports: NO_LIMIT,
            wildcards: true,
            conn: NO_LIMIT,
            leaf: NO_LIMIT,
        }
    }
}

/// `nats` of an `account` JWT (issued by an operator key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    #[serde(default)]
    pub limits: AccountLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<ExternalAuthorization>,
    #[serde(default, rename = "type")]
    pub claim_type: String,
    #[serde(default)]
    pub version: u32,
}
claim_body!(Account, "account", Operator);

impl Default for Account {
    fn default() -> Self {
        Account {
            limits: AccountLimits::default(),
            signing_keys: Vec::new(),
            authorization: None,
            claim_type: "account".into(),
            version: VERSION,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operator

/// `nats` of an `operator` JWT (self-signed by the operator key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operator {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_account: String,
    #[serde(default, rename = "type")]
    pub claim_type: String,
    #[serde(default)]
    pub version: u32,
}
claim_body!(Operator, "operator", Operator);

impl Default for Operator {
    fn default() -> Self {
        Operator {
            signing_keys: Vec::new(),
            system_account: String::new(),
            claim_type: "operator".into(),
            version: VERSION,
        }
    }
}

/// Text of a `.creds` file for a user JWT and its seed (the format NATS clients read).
pub fn creds_text(user_jwt: &str, user_seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// Serde for `Option<Secret>` as a plain JSON string (empty string = `None`).
mod opt_secret {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_str(secret.expose()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        Ok(v.filter(|s| !s.is_empty()).map(Secret::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn user_jwt(signer: &KeyPair, sub: &str) -> String {
        let mut c = Claims::new(sub, NOW, User::default());
        c.exp = NOW + 60;
        encode(&mut c, signer).unwrap()
    }

    #[test]
    fn fast_signer_writes_the_same_tokens_as_the_nkey() {
        for _ in 0..8 {
            let acc = KeyPair::new_account();
            let fast = FastSigner::new(&acc).unwrap();
            let sub = KeyPair::new_user().public_key();
            let mut a = Claims::new(sub.clone(), NOW, User::default());
            let mut b = a.clone();
            let slow = encode(&mut a, &acc).unwrap();
            let quick = encode(&mut b, &fast).unwrap();
            assert_eq!(slow, quick);
            let back: Claims<User> = decode_at(&quick, NOW).unwrap();
            assert_eq!(back.iss, acc.public_key());
            // A user key may not sign user JWTs, fast or not.
            let u = FastSigner::new(&KeyPair::new_user()).unwrap();
            assert_eq!(
                encode(&mut Claims::new(sub, NOW, User::default()), &u),
                Err(JwtError::Signer)
            );
        }
        // No seed, no signer.
        let public_only = KeyPair::from_public_key(&KeyPair::new_account().public_key()).unwrap();
        assert!(FastSigner::new(&public_only).is_err());
    }

    #[test]
    fn public_key_kinds_agree_with_nkeys() {
        let keys = [
            (KeyPair::new_user(), KeyPairType::User),
            (KeyPair::new_account(), KeyPairType::Account),
            (KeyPair::new_server(), KeyPairType::Server),
            (KeyPair::new_operator(), KeyPairType::Operator),
        ];
        for (kp, kind) in &keys {
            let p = kp.public_key();
            assert!(is_public_key(&p, kind.clone()));
            for (_, other) in keys.iter().filter(|(_, k)| k != kind) {
                assert!(!is_public_key(&p, other.clone()));
            }
            // Any changed character breaks the checksum (or the prefix); so do other lengths.
            for i in 0..p.len() {
                let mut b = p.clone().into_bytes();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                let bad = String::from_utf8(b).unwrap();
                assert_eq!(
                    is_public_key(&bad, kind.clone()),
                    KeyPair::from_public_key(&bad).is_ok_and(|k| k.key_pair_type() == *kind),
                    "{bad}"
                );
                assert!(!is_public_key(&bad, kind.clone()), "{bad}");
            }
            assert!(!is_public_key(&p[1..], kind.clone()));
            assert!(!is_public_key(&format!("{p}A"), kind.clone()));
            // A seed is not a public key.
            assert!(!is_public_key(&kp.seed().unwrap(), kind.clone()));
        }
    }

    #[test]
    fn jti_insertion_matches_a_second_serialisation() {
        let acc = KeyPair::new_account();
        let user = KeyPair::new_user().public_key();
        let auds = ["", "APP", "a \"quoted\" \\ name", "ünïcode ✓", "\u{1}ctl"];
        for aud in auds {
            for exp in [0u64, 1, NOW + 3600, u64::MAX] {
                for name in ["", "ns/sa"] {
                    let mut c = Claims::new(user.clone(), NOW, User::default());
                    c.aud = aud.to_string();
                    c.exp = exp;
                    c.name = name.to_string();
                    c.nats.tags = vec!["k8s-namespace:shop".into()];
                    let token = encode(&mut c, &acc).unwrap();
                    let payload = token.split('.').nth(1).unwrap();
                    let got = BASE64URL_NOPAD.decode(payload.as_bytes()).unwrap();
                    assert_eq!(
                        got,
                        serde_json::to_vec(&c).unwrap(),
                        "aud {aud:?} exp {exp}"
                    );
                    // The jti is the hash of the claims without it.
                    let mut bare = c.clone();
                    bare.jti.clear();
                    let unhashed = serde_json::to_vec(&bare).unwrap();
                    let d = ring::digest::digest(&ring::digest::SHA512_256, &unhashed);
                    assert_eq!(c.jti, BASE32_NOPAD.encode(d.as_ref()));
                    // The fast path is taken (not the fallback).
                    assert_eq!(with_jti(&unhashed, &c), Some(got));
                }
            }
        }
    }

    #[test]
    fn header_constant_is_the_fixed_header() {
        assert_eq!(
            BASE64URL_NOPAD.decode(HEADER_B64.as_bytes()).unwrap(),
            br#"{"typ":"JWT","alg":"ed25519-nkey"}"#
        );
    }

    #[test]
    fn round_trip_user() {
        let acc = KeyPair::new_account();
        let user = KeyPair::new_user();
        let mut perms = Permissions::default();
        perms.publish.allow.push("app.>".into());
        let mut c = Claims::new(
            user.public_key(),
            NOW,
            User::with_permissions(perms.clone()),
        );
        c.name = "shop/orders".into();
        c.aud = "APP".into();
        c.exp = NOW + 10;
        let token = encode(&mut c, &acc).unwrap();
        assert!(token.starts_with(HEADER_B64));
        let back: Claims<User> = decode_at(&token, NOW).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.iss, acc.public_key());
        assert_eq!(back.nats.permissions(), perms);
        assert_eq!(back.nats.version, 2);
        assert_eq!(back.nats.claim_type, "user");
        // exp is inclusive: valid at exp, expired one second later.
        assert!(decode_at::<User>(&token, NOW + 10).is_ok());
        assert_eq!(
            decode_at::<User>(&token, NOW + 11).unwrap_err(),
            JwtError::Expired
        );
    }

    #[test]
    fn jti_is_sha512_256_of_claims_without_jti() {
        let acc = KeyPair::new_account();
        let token = user_jwt(&acc, &KeyPair::new_user().public_key());
        let mut c: Claims<User> = decode_at(&token, NOW).unwrap();
        let jti = std::mem::take(&mut c.jti);
        let json = serde_json::to_vec(&c).unwrap();
        let d = ring::digest::digest(&ring::digest::SHA512_256, &json);
        assert_eq!(jti, BASE32_NOPAD.encode(d.as_ref()));
        assert_eq!(jti.len(), 52);
    }

    #[test]
    fn tampered_payload_or_signature_is_refused() {
        let acc = KeyPair::new_account();
        let sub = KeyPair::new_user().public_key();
        let token = user_jwt(&acc, &sub);
        let parts: Vec<&str> = token.split('.').collect();
        // Change the payload: grant everything.
        let mut c: Claims<User> = decode_at(&token, NOW).unwrap();
        c.nats.publish.allow = vec![">".into()];
        let forged_payload = BASE64URL_NOPAD.encode(&serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            decode_at::<User>(&forged, NOW).unwrap_err(),
            JwtError::Signature
        );
        // Flip one signature bit.
        let mut sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        sig[10] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], BASE64URL_NOPAD.encode(&sig));
        assert_eq!(
            decode_at::<User>(&forged, NOW).unwrap_err(),
            JwtError::Signature
        );
        // Re-sign with another account key but keep the claimed issuer.
        let other = KeyPair::new_account();
        let input = format!("{}.{}", parts[0], forged_payload);
        let sig = other.sign(input.as_bytes()).unwrap();
        let forged = format!("{input}.{}", BASE64URL_NOPAD.encode(&sig));
        assert_eq!(
            decode_at::<User>(&forged, NOW).unwrap_err(),
            JwtError::Signature
        );
    }

    #[test]
    fn structure_and_header_errors() {
        let acc = KeyPair::new_account();
        let token = user_jwt(&acc, &KeyPair::new_user().public_key());
        assert_eq!(
            decode_at::<User>("a.b", NOW).unwrap_err(),
            JwtError::Malformed
        );
        assert_eq!(
            decode_at::<User>(&format!("{token}.x"), NOW).unwrap_err(),
            JwtError::Malformed
        );
        // Padding is not base64url-no-pad.
        let padded = token.replacen('.', "=.", 1);
        assert_eq!(
            decode_at::<User>(&padded, NOW).unwrap_err(),
            JwtError::Base64
        );
        let rest = token.split_once('.').unwrap().1;
        for (hdr, ok) in [
            (r#"{"typ":"jwt","alg":"ed25519"}"#, true),
            (r#"{"typ":"JWT","alg":"ed25519-nkey"}"#, true),
            (r#"{"typ":"JWT","alg":"none"}"#, false),
            (r#"{"typ":"JWT","alg":"HS256"}"#, false),
            (r#"{"typ":"JOSE","alg":"ed25519-nkey"}"#, false),
            (r#"{"alg":"ed25519-nkey"}"#, false),
        ] {
            let h = BASE64URL_NOPAD.encode(hdr.as_bytes());
            // Re-sign over the new header so only the header decides.
            let payload = rest.split('.').next().unwrap();
            let input = format!("{h}.{payload}");
            let sig = acc.sign(input.as_bytes()).unwrap();
            let t = format!("{input}.{}", BASE64URL_NOPAD.encode(&sig));
            assert_eq!(decode_at::<User>(&t, NOW).is_ok(), ok, "{hdr}");
        }
    }

    #[test]
    fn wrong_issuer_prefix_is_refused() {
        // A user JWT signed by an operator key, a server key, a user key.
        for kp in [
            KeyPair::new_operator(),
            KeyPair::new_server(),
            KeyPair::new_user(),
        ] {
            let mut c = Claims::new(KeyPair::new_user().public_key(), NOW, User::default());
            assert_eq!(encode(&mut c, &kp).unwrap_err(), JwtError::Signer);
            // Hand-sign it anyway.
            c.iss = kp.public_key();
            c.nats.stamp();
            let input = format!(
                "{HEADER_B64}.{}",
                BASE64URL_NOPAD.encode(&serde_json::to_vec(&c).unwrap())
            );
            let sig = kp.sign(input.as_bytes()).unwrap();
            let t = format!("{input}.{}", BASE64URL_NOPAD.encode(&sig));
            assert_eq!(decode_at::<User>(&t, NOW).unwrap_err(), JwtError::Issuer);
        }
        // An account key is not a request issuer.
        let acc = KeyPair::new_account();
        let mut c = Claims::new("x", NOW, AuthorizationRequest::default());
        assert_eq!(encode(&mut c, &acc).unwrap_err(), JwtError::Signer);
    }

    fn hand_signed_user(kp: &KeyPair, version: u32, v1_input: bool) -> String {
        let mut c = Claims::new(KeyPair::new_user().public_key(), NOW, User::default());
        c.iss = kp.public_key();
        c.nats.version = version;
        let payload = BASE64URL_NOPAD.encode(&serde_json::to_vec(&c).unwrap());
        let input = format!("{HEADER_B64}.{payload}");
        let signed = if v1_input { &payload } else { &input };
        let sig = kp.sign(signed.as_bytes()).unwrap();
        format!("{input}.{}", BASE64URL_NOPAD.encode(&sig))
    }

    #[test]
    fn v1_signs_payload_only_and_v2_signs_header_and_payload() {
        let acc = KeyPair::new_account();
        assert!(decode_at::<User>(&hand_signed_user(&acc, 2, false), NOW).is_ok());
        assert_eq!(
            decode_at::<User>(&hand_signed_user(&acc, 2, true), NOW).unwrap_err(),
            JwtError::Signature
        );
        assert!(decode_at::<User>(&hand_signed_user(&acc, 1, true), NOW).is_ok());
        assert_eq!(
            decode_at::<User>(&hand_signed_user(&acc, 1, false), NOW).unwrap_err(),
            JwtError::Signature
        );
        assert_eq!(
            decode_at::<User>(&hand_signed_user(&acc, 0, false), NOW).unwrap_err(),
            JwtError::Version
        );
        assert_eq!(
            decode_at::<User>(&hand_signed_user(&acc, 3, false), NOW).unwrap_err(),
            JwtError::Version
        );
    }

    #[test]
    fn wrong_claim_type_and_nbf() {
        let acc = KeyPair::new_account();
        let mut c = Claims::new(
            KeyPair::new_user().public_key(),
            NOW,
            AuthorizationResponse::default(),
        );
        c.nbf = NOW + 5;
        let t = encode(&mut c, &acc).unwrap();
        assert_eq!(decode_at::<User>(&t, NOW).unwrap_err(), JwtError::WrongType);
        assert_eq!(
            decode_at::<AuthorizationResponse>(&t, NOW).unwrap_err(),
            JwtError::NotYetValid
        );
        assert!(decode_at::<AuthorizationResponse>(&t, NOW + 5).is_ok());
    }

    #[test]
    fn user_claims_exact_shape() {
        let acc = KeyPair::new_account();
        let mut perms = Permissions::default();
        perms.publish.allow.push("app.>".into());
        perms.subscribe.allow.push("app.>".into());
        let mut user = User::with_permissions(perms);
        user.tags.push("k8s-namespace:app".into());
        let mut c = Claims::new("UXXX", NOW, user);
        c.name = "n".into();
        c.aud = "APP".into();
        let t = encode(&mut c, &acc).unwrap();
        let payload = BASE64URL_NOPAD
            .decode(t.split('.').nth(1).unwrap().as_bytes())
            .unwrap();
        let expected = format!(
            r#"{{"aud":"APP","jti":"{}","iat":{NOW},"iss":"{}","name":"n","sub":"UXXX","nats":{{"pub":{{"allow":["app.>"]}},"sub":{{"allow":["app.>"]}},"subs":-1,"data":-1,"payload":-1,"tags":["k8s-namespace:app"],"type":"user","version":2}}}}"#,
            c.jti,
            acc.public_key()
        );
        assert_eq!(String::from_utf8(payload).unwrap(), expected);
    }

    #[test]
    fn request_secrets_are_redacted_in_debug_and_round_trip() {
        let server = KeyPair::new_server();
        let mut req = AuthorizationRequest::default();
        req.connect_opts.auth_token = Some(Secret::new("tok-SECRET"));
        req.connect_opts.pass = Some(Secret::new("pw-SECRET"));
        req.client_info.user = Some(Secret::new("user-SECRET"));
        req.user_nkey = KeyPair::new_user().public_key();
        let mut c = Claims::new("AXXX", NOW, req);
        let t = encode(&mut c, &server).unwrap();
        let back: Claims<AuthorizationRequest> = decode_at(&t, NOW).unwrap();
        assert_eq!(
            back.nats.connect_opts.auth_token.as_ref().unwrap().expose(),
            "tok-SECRET"
        );
        let dbg = format!("{back:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
    }

    #[test]
    fn account_and_operator_round_trip() {
        let op = KeyPair::new_operator();
        let acc = KeyPair::new_account();
        let mut a = Account::default();
        a.signing_keys.push(KeyPair::new_account().public_key());
        a.authorization = Some(ExternalAuthorization {
            auth_users: vec![KeyPair::new_user().public_key()],
            allowed_accounts: vec!["*".into()],
            xkey: String::new(),
        });
        let mut c = Claims::new(acc.public_key(), NOW, a);
        let t = encode(&mut c, &op).unwrap();
        let back: Claims<Account> = decode_at(&t, NOW).unwrap();
        assert_eq!(back.nats, c.nats);
        assert_eq!(back.nats.limits.conn, -1);
        let mut o = Claims::new(op.public_key(), NOW, Operator::default());
        let t = encode(&mut o, &op).unwrap();
        assert!(decode_at::<Operator>(&t, NOW).is_ok());
        // An account may not issue an account JWT.
        assert_eq!(encode(&mut c.clone(), &acc).unwrap_err(), JwtError::Signer);
    }
}
