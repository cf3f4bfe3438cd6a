//! Output SPECs as users write them: `-`, `file:PATH`, each optionally
//! followed by `,format=json`.

use std::{fmt, path::PathBuf, str::FromStr};

/// Event encoding of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
}

/// A parsed output SPEC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    Stdout { format: Format },
    File { path: PathBuf, format: Format },
}

/// A SPEC that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("empty output spec")]
    Empty,
    #[error("output {spec:?}: file: needs a path, e.g. file:/var/log/sensor/events.jsonl")]
    NoPath { spec: String },
    #[error("output {spec:?}: unknown option {option:?} (supported: format=json)")]
    Option { spec: String, option: String },
    #[error(
        "output {spec:?}: format {format:?} is not available in this version (supported: json)"
    )]
    Format { spec: String, format: String },
    #[error("output {spec:?}: unsupported output (supported: - for stdout, file:PATH)")]
    Scheme { spec: String },
}

impl FromStr for OutputSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let target = parts.next().unwrap_or_default().trim();
        let mut format = Format::Json;
        for option in parts {
            match option.trim().split_once('=') {
                Some(("format", "json")) => format = Format::Json,
                Some(("format", other)) => {
                    return Err(SpecError::Format {
                        spec: s.to_owned(),
                        format: other.to_owned(),
                    });
                }
                _ => {
                    return Err(SpecError::Option {
                        spec: s.to_owned(),
                        option: option.to_owned(),
                    });
                }
            }
        }
        if target.is_empty() {
            return Err(SpecError::Empty);
        }
        if target == "-" {
            return Ok(Self::Stdout { format });
        }
        if let Some(path) = target.strip_prefix("file:") {
            if path.is_empty() {
                return Err(SpecError::NoPath { spec: s.to_owned() });
            }
            return Ok(Self::File {
                path: PathBuf::from(path),
                format,
            });
        }
        Err(SpecError::Scheme { spec: s.to_owned() })
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout { .. } => f.write_str("-"),
            Self::File { path, .. } => write!(f, "file:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            "-".parse(),
            Ok(OutputSpec::Stdout {
                format: Format::Json
            })
        );
        assert_eq!(
            "file:/tmp/x.jsonl,format=json".parse(),
            Ok(OutputSpec::File {
                path: "/tmp/x.jsonl".into(),
                format: Format::Json
            })
        );
    }

    #[test]
    fn rejects_bad_specs() {
        assert_eq!("".parse::<OutputSpec>(), Err(SpecError::Empty));
        assert!(matches!(
            "file:".parse::<OutputSpec>(),
            Err(SpecError::NoPath { .. })
        ));
        assert!(matches!(
            "bogus://x".parse::<OutputSpec>(),
            Err(SpecError::Scheme { .. })
        ));
        assert!(matches!(
            "-,format=xml".parse::<OutputSpec>(),
            Err(SpecError::Format { .. })
        ));
        assert!(matches!(
            "-,level=3".parse::<OutputSpec>(),
            Err(SpecError::Option { .. })
        ));
        let msg = "bogus://x".parse::<OutputSpec>().unwrap_err().to_string();
        assert!(
            msg.contains("bogus://x") && msg.contains("file:PATH"),
            "{msg}"
        );
    }
}
