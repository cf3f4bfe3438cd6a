//! TLS client settings shared by the network outputs (syslog over TLS,
//! HTTPS).
//!
//! One rule for every output: with no `ca` the server must present a chain
//! to one of Mozilla's roots (the `webpki-roots` set, the same one ureq uses
//! for HTTPS by default); with `ca` it must chain to one of the certificates
//! in that PEM file instead, and the built-in roots are not trusted. The
//! server's name is always checked against the host the output connects to
//! (a DNS name or an IP address in the certificate's subjectAltName).
//!
//! The crypto provider is ring, passed explicitly, so no process-wide
//! default provider has to be installed.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

/// How an output checks its server's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust instead of the built-in roots.
    pub ca: Option<PathBuf>,
}

/// Why the TLS settings could not be built. The cause, if any, is the
/// error's `source()` (not repeated in its message).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds a malformed PEM section.
    #[error("cannot load the CA file {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA file holds no `CERTIFICATE` section.
    #[error("CA file {}: no certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    /// A certificate in the CA file is not one rustls accepts as a root.
    #[error("CA file {}: certificate #{index} is not usable as a trust anchor", path.display())]
    BadCertificate {
        path: PathBuf,
        /// Position of the certificate in the file, from 1.
        index: usize,
        #[source]
        source: rustls::Error,
    },
    /// The host is neither a DNS name nor an IP address, so no certificate
    /// can be checked against it.
    #[error("{host:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName { host: String },
    /// rustls refused the settings (no usable protocol version).
    #[error("rustls refused the TLS settings")]
    Config(#[source] rustls::Error),
}

/// The certificates of `opts.ca`, each checked to be a usable trust anchor;
/// `None` when no CA file is set (the built-in roots apply).
pub fn ca_certificates(
    opts: &TlsOptions,
) -> Result<Option<Vec<CertificateDer<'static>>>, TlsError> {
    let Some(path) = &opts.ca else {
        return Ok(None);
    };
    let certs = read_ca_file(path)?;
    // Parse each one as rustls will, so a bad file fails now, with its name.
    root_store(path, &certs)?;
    Ok(Some(certs))
}

/// The rustls client settings for `opts` (ring provider, TLS 1.2 and 1.3,
/// no client certificate).
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &opts.ca {
        Some(path) => root_store(path, &read_ca_file(path)?)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |source| TlsError::CaFile {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn root_store(path: &Path, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|source| TlsError::BadCertificate {
                path: path.to_path_buf(),
                index: i + 1,
                source,
            })?;
    }
    Ok(store)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn builtin_roots_without_ca() {
        assert!(client_config(&TlsOptions::default()).is_ok());
        assert!(ca_certificates(&TlsOptions::default()).unwrap().is_none());
    }

    #[test]
    fn missing_file_is_named() {
        let opts = TlsOptions {
            ca: Some("/nonexistent/ca.pem".into()),
        };
        let err = client_config(&opts).unwrap_err();
        assert!(matches!(err, TlsError::CaFile { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("No such file"), "{cause}");
    }

    #[test]
    fn file_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "empty.pem", "not a pem file\n");
        let err = client_config(&TlsOptions { ca: Some(path) }).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn garbage_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Valid base64, but not a certificate.
        let path = write(
            dir.path(),
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let err = client_config(&TlsOptions { ca: Some(path) }).unwrap_err();
        assert!(
            matches!(err, TlsError::BadCertificate { index: 1, .. }),
            "{err:?}"
        );
    }
}
