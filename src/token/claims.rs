//! The token payload as serde structs (no JSON trees on the hot path) and the check that `sub`
//! agrees with `kubernetes.io` (the name rules are `policy::is_dns_label`/`is_dns_subdomain`).
//! Unknown claims are ignored. Never logs claim values.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Issuer of legacy Secret-based tokens (kube `LegacyIssuer`).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub exp: Option<NumericDate>,
    #[serde(default)]
    pub nbf: Option<NumericDate>,
    #[serde(default)]
    pub iat: Option<NumericDate>,
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default, rename = "kubernetes.io")]
    pub kubernetes: Option<KubeClaims>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/namespace")]
    pub legacy_namespace: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub legacy_sa_name: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub legacy_sa_uid: Option<String>,
    #[serde(default, rename = "kubernetes.io/serviceaccount/secret.name")]
    pub legacy_secret_name: Option<String>,
}

impl Claims {
    /// The flat legacy claims and no `kubernetes.io` object: a Secret-based token.
    pub fn is_legacy(&self) -> bool {
        self.kubernetes.is_none()
            && (self.legacy_namespace.is_some()
                || self.legacy_sa_name.is_some()
                || self.legacy_sa_uid.is_some()
                || self.legacy_secret_name.is_some())
    }
}

/// The private `kubernetes.io` claim of bound tokens.
#[derive(Debug, Default, Deserialize)]
pub struct KubeClaims {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub serviceaccount: Option<Ref>,
    #[serde(default)]
    pub pod: Option<Ref>,
    #[serde(default)]
    pub node: Option<Ref>,
    #[serde(default)]
    pub secret: Option<Ref>,
}

/// `{"name","uid"}`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
pub struct Ref {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// `aud`: a string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn intersects(&self, wanted: &[String]) -> bool {
        match self {
            Audience::One(a) => wanted.iter().any(|w| w == a),
            Audience::Many(v) => v.iter().any(|a| wanted.iter().any(|w| w == a)),
        }
    }
}

/// A JSON NumericDate: an integer or a float, truncated to whole seconds; negative values
/// count as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumericDate(pub u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(v.max(0) as u64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if !v.is_finite() {
                    return Err(E::custom("NumericDate is not finite"));
                }
                // `as` saturates: huge values become u64::MAX, negatives 0.
                Ok(NumericDate(v.trunc() as u64))
            }
        }
        d.deserialize_any(V)
    }
}

/// `sub == "system:serviceaccount:<ns>:<name>"`, without allocating.
pub fn sub_matches(sub: &str, ns: &str, name: &str) -> bool {
    sub.strip_prefix("system:serviceaccount:")
        .and_then(|r| r.strip_prefix(ns))
        .and_then(|r| r.strip_prefix(':'))
        == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_matching_is_exact() {
        assert!(sub_matches(
            "system:serviceaccount:shop:orders",
            "shop",
            "orders"
        ));
        assert!(!sub_matches(
            "system:serviceaccount:shop:orders",
            "sho",
            "p:orders"
        ));
        assert!(!sub_matches(
            "system:serviceaccount:shop:orders2",
            "shop",
            "orders"
        ));
        assert!(!sub_matches(
            "system:serviceaccounts:shop:orders",
            "shop",
            "orders"
        ));
        assert!(!sub_matches("", "shop", "orders"));
    }

    #[test]
    fn numeric_dates_and_audiences() {
        let c: Claims = serde_json::from_str(
            r#"{"exp":1.9e9,"nbf":-5,"iat":1767225600,"aud":"nats","other":{"x":[1]}}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(NumericDate(1_900_000_000)));
        assert_eq!(c.nbf, Some(NumericDate(0)));
        assert_eq!(c.iat, Some(NumericDate(1_767_225_600)));
        assert!(c.aud.unwrap().intersects(&["nats".into()]));
        assert!(serde_json::from_str::<Claims>(r#"{"exp":"1"}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"aud":1}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"aud":["a",1]}"#).is_err());
        let many: Audience = serde_json::from_str(r#"["a","nats"]"#).unwrap();
        assert!(many.intersects(&["x".into(), "nats".into()]));
        assert!(!many.intersects(&["Nats".into()]));
        assert!(!many.intersects(&[]));
    }
}
