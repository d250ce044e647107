//! `policy-reconciler dev-certificate`: a self-signed certificate and its RSA key for the
//! certificate credential, for development and the simulator (`tenant.client_certificate_path`,
//! `tenant.client_key_path`, `simulator.client_certificate_paths`). Production certificates
//! come from the organisation's PKI or Key Vault; the equivalent openssl line is in
//! docs/configuration.md ("Identity and permissions").
use std::path::{Path, PathBuf};

use chrono::{Datelike, Utc};

use crate::tenant::auth::{certificate_der, thumbprint_s256};

/// A certificate and its private key, in PEM.
pub struct DevCertificate {
    pub certificate_pem: String,
    /// PKCS#8 PEM of the RSA private key. Never printed.
    pub key_pem: String,
    /// The certificate's `x5t#S256` (what client assertions name it by).
    pub thumbprint_s256: String,
}

/// A self-signed RS256 (RSA 2048) certificate for `common_name`, valid from today for `days`.
pub fn generate(common_name: &str, days: u32) -> anyhow::Result<DevCertificate> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let ymd =
        |d: chrono::DateTime<Utc>| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let today = Utc::now() - chrono::Duration::days(1);
    params.not_before = ymd(today);
    params.not_after = ymd(today + chrono::Duration::days(i64::from(days.max(1)) + 1));
    let cert = params.self_signed(&key)?;
    let certificate_pem = cert.pem();
    let der = certificate_der(certificate_pem.as_bytes()).map_err(anyhow::Error::msg)?;
    Ok(DevCertificate {
        thumbprint_s256: thumbprint_s256(&der),
        certificate_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Where [`write()`] put the pair.
pub struct Written {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub thumbprint_s256: String,
}

/// Writes `{name}.crt` and `{name}.key` (the key readable by its owner only) into `dir`,
/// refusing to overwrite either.
pub fn write(dir: &Path, name: &str, cert: &DevCertificate) -> anyhow::Result<Written> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let certificate = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    for path in [&certificate, &key] {
        anyhow::ensure!(!path.exists(), "{} exists; not overwritten", path.display());
    }
    std::fs::write(&certificate, &cert.certificate_pem)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(&key)?.write_all(cert.key_pem.as_bytes())?;
    Ok(Written {
        certificate,
        key,
        thumbprint_s256: cert.thumbprint_s256.clone(),
    })
}

/// What the command prints: the paths and the thumbprint, never the key.
pub fn render(w: &Written) -> String {
    format!(
        "certificate: {}\nprivate key: {}\nx5t#S256:    {}\n\n\
         Worker:    tenant.credential = \"certificate\", tenant.client_certificate_path and\n\
         \x20          tenant.client_key_path = the two files above.\n\
         Simulator: simulator.client_certificate_paths = [\"{}\"].\n\
         Entra ID:  upload the certificate (not the key) to the app registration.\n",
        w.certificate.display(),
        w.key.display(),
        w.thumbprint_s256,
        w.certificate.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::auth::CertificateKey;

    #[test]
    fn a_generated_pair_signs_assertions_named_by_its_thumbprint() {
        let cert = generate("policy-reconciler-test", 30).unwrap();
        let dir = std::env::temp_dir().join(format!("devcert-{}", uuid::Uuid::new_v4()));
        let written = write(&dir, "client", &cert).unwrap();
        let key = CertificateKey::load(&written.certificate, &written.key).unwrap();
        assert_eq!(key.thumbprint_s256, cert.thumbprint_s256);
        let jwt = key
            .assertion(
                "app",
                "https://login.example/t/oauth2/v2.0/token",
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(
            header.x5t_s256.as_deref(),
            Some(cert.thumbprint_s256.as_str())
        );
        assert!(write(&dir, "client", &cert).is_err(), "never overwrites");
        assert!(!render(&written).contains("PRIVATE KEY"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
