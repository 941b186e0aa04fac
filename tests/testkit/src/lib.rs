//! Real servers and a real client for the project's tests and benchmarks.
//!
//! Servers run as child processes on free loopback ports in temporary directories and are
//! killed when the test process exits (parent-death signal), even if a test panics.

pub mod client;
pub mod servers;
pub mod tls;

pub use client::{Client, Reply};
pub use servers::{free_port, PostgresServer, RedisCluster, RedisServer, SentinelRedis};
pub use tls::TestCa;
