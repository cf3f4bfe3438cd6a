//! What the stages' errors share. Each stage has its own `thiserror` enum
//! (`LoaderError`, `ConfigError`, `PolicyError`, `EnforcementError`,
//! `AttributionError`, `ControlError`, `ReloadError`, …) that wraps the
//! errors of the stages below it; `anyhow` is used by the CLI only
//! (`crate::cli`), where errors meet the user.

use std::fmt;

/// `error` and its sources, joined by `": "`: how the CLI prints an error
/// (`anyhow`'s `{:#}`), for messages that leave the daemon another way (a
/// control-socket answer, a tamper event's detail).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_as_the_cli_does() {
        let e = Outer(Inner(std::io::Error::other("cause")));
        assert_eq!(Chain(&e).to_string(), "outer: inner: cause");
        assert_eq!(
            Chain(&e).to_string(),
            format!(
                "{:#}",
                anyhow::Error::new(Outer(Inner(std::io::Error::other("cause"))))
            )
        );
    }
}
