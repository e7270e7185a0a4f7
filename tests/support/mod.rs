//! Helpers shared by integration tests.

pub mod daemon;
pub mod fake_apiserver;
pub mod netns;
