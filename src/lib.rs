//! nats-k8s-callout: a NATS auth callout service that admits Kubernetes workloads by their
//! ServiceAccount token and decides what each may publish and subscribe to.
//!
//! Where things live:
//! - `nats`: our small synchronous NATS client (protocol parser, connection, TLS, reconnect);
//! - `natsjwt`: NATS JWTs (ed25519-nkey): decode, verify, encode, sign;
//! - `callout`: the auth callout service (request in, signed response out, worker pool, xkey);
//! - `authz`: the interface between the callout and the decision;
//! - `token`: Kubernetes ServiceAccount token validation (pure);
//! - `jwks`: signing key sets of the token issuers and their refresh thread;
//! - `kube`: Kubernetes API client and the ServiceAccount cache (list + watch);
//! - `policy`, `subject`: permissions from namespace, annotations and guard rails (pure);
//! - `decision`: the decision path that ties token, cache and policy together;
//! - `config`: environment variables to validated settings;
//! - `http`, `metrics`, `logging`: health, readiness, Prometheus metrics, structured logs;
//! - `app`, `cli`, `signals`: wiring of the threads, the command line, SIGTERM/SIGINT;
//! - `clock`, `backoff`, `secret`, `httpclient`, `permissions`: small shared pieces;
//! - `testkit`: a nats-server process harness and a Kubernetes API double, for tests, the demo
//!   and the benchmarks (never used by the service itself).

pub mod app;
pub mod authz;
pub mod backoff;
pub mod callout;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod http;
pub mod httpclient;
pub mod jwks;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod natsjwt;
pub mod permissions;
pub mod policy;
pub mod secret;
pub mod signals;
pub mod subject;
pub mod testkit;
pub mod token;
