//! Helpers shared by integration tests.

pub mod fake_apiserver;
pub mod netns;
