//! The permissions of a NATS user, in the exact JSON shape of a NATS user JWT
//! (`nats.pub`, `nats.sub`, `nats.resp`). Built by `policy`, written by `natsjwt`.

use serde::{Deserialize, Serialize};

/// Allow and deny lists of subjects (NATS wildcards allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// `allow_responses`: publish to the reply subject of up to `max` received requests,
/// each within `ttl_ns` nanoseconds (0 = the server's default of 2 minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    pub max: i64,
    #[serde(rename = "ttl", default)]
    pub ttl_ns: i64,
}

/// The permission part of a NATS user JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    #[serde(rename = "pub", default)]
    pub publish: SubjectRules,
    #[serde(rename = "sub", default)]
    pub subscribe: SubjectRules,
    #[serde(rename = "resp", default, skip_serializing_if = "Option::is_none")]
    pub responses: Option<ResponsePermission>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_nats_jwt_shape() {
        let p = Permissions {
            publish: SubjectRules {
                allow: vec!["shop.>".into()],
                deny: vec![],
            },
            subscribe: SubjectRules {
                allow: vec!["shop.>".into()],
                deny: vec!["$SYS.>".into()],
            },
            responses: Some(ResponsePermission { max: 1, ttl_ns: 0 }),
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(
            j,
            r#"{"pub":{"allow":["shop.>"]},"sub":{"allow":["shop.>"],"deny":["$SYS.>"]},"resp":{"max":1,"ttl":0}}"#
        );
        let back: Permissions = serde_json::from_str(&j).unwrap();
        assert_eq!(back, p);
    }
}
