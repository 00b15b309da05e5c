//! Test infrastructure shared by the integration tests, the local demo and the benchmarks:
//! real `nats-server` processes with generated configurations, and a Kubernetes API double.
//! The service itself never uses this module.

pub mod k8s_double;
pub mod nats_server;
pub mod operator;
pub mod vectors;
