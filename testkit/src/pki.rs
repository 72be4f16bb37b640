//! Certificates for the local control plane: one CA, a serving certificate for every component
//! (SANs for loopback and the in-cluster API names), an admin client certificate in
//! `system:masters`, and the service-account signing key pair. ECDSA P-256 throughout.

use std::{fs, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Error, Result};

/// PEM files written into the cluster directory.
#[derive(Debug, Clone)]
pub(crate) struct PkiFiles {
    pub ca_cert: String,
    pub serving_cert: String,
    pub serving_key: String,
    pub sa_key: String,
    pub sa_pub: String,
}

/// PEM contents, kept for the kubeconfig.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub files: PkiFiles,
}

const SERVING_NAMES: [&str; 7] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "127.0.0.1",
    "10.96.0.1",
];

/// A new key and a certificate for it, signed by `issuer`.
fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    subject: &[(DnType, &str)],
    sans: Vec<String>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    for (kind, value) in subject {
        params.distinguished_name.push(kind.clone(), *value);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = extended_key_usages;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// Generates every key and certificate and writes them to `dir/pki/`.
pub(crate) fn generate(dir: &Path) -> Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "modelfleet-e2e-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let (serving_cert, serving_key) = leaf(
        &issuer,
        &[(DnType::CommonName, "kube-apiserver")],
        SERVING_NAMES.map(String::from).to_vec(),
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (admin_cert, admin_key) = leaf(
        &issuer,
        &[
            (DnType::CommonName, "modelfleet-e2e-admin"),
            (DnType::OrganizationName, "system:masters"),
        ],
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;

    let sa_key = KeyPair::generate()?;

    let pki_dir = dir.join("pki");
    fs::create_dir_all(&pki_dir).map_err(Error::io(format!("create {}", pki_dir.display())))?;
    let write = |name: &str, pem: &str| -> Result<String> {
        let path = pki_dir.join(name);
        fs::write(&path, pem).map_err(Error::io(format!("write {}", path.display())))?;
        Ok(path.to_string_lossy().into_owned())
    };
    // The admin pair is embedded in the kubeconfig; the files are for curl and debugging.
    write("admin.crt", &admin_cert.pem())?;
    write("admin.key", &admin_key.serialize_pem())?;
    let files = PkiFiles {
        ca_cert: write("ca.crt", &ca_cert.pem())?,
        serving_cert: write("serving.crt", &serving_cert.pem())?,
        serving_key: write("serving.key", &serving_key.serialize_pem())?,
        sa_key: write("sa.key", &sa_key.serialize_pem())?,
        sa_pub: write("sa.pub", &sa_key.public_key_pem())?,
    };
    Ok(Pki {
        ca_cert_pem: ca_cert.pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        files,
    })
}
