//! The tokens, targets and input files that every client check uses.
//!
//! Two sets of tokens hold the same objects: the fixture's key set (RSA,
//! EC and AES keys) plus a self-signed X.509 certificate for each key pair,
//! which Java's key store needs to list a private key:
//! - three HSMs, each a `p11-kit server` process serving one SoftHSM2
//!   token (`three_hsm_processes`). The first one's token is also used
//!   directly through SoftHSM2's module and through `p11-kit-client.so`.
//! - one SoftHSM2 directory with three `WLD_A` tokens
//!   (`one_softhsm_with_tokens`), which p11wld loads in the client's own
//!   process.

use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::object::{Attribute, CertificateType, ObjectClass};
use cryptoki::session::Session;
use tempfile::TempDir;

use crate::common::config::P11WLD_CONFIG;
use crate::common::p11kit::P11_KIT_SERVER_ADDRESS;
use crate::common::softhsm::SOFTHSM2_CONF;
use crate::common::{
    keys, one_softhsm_with_tokens, paths, three_hsm_processes, ConfigFile, OneSoftHsm, ThreeHsms,
    USER_PIN,
};
use crate::harness::{run, write_file, Target, TargetKind};

/// Environment variable through which the clients get the user PIN: named
/// in `pkcs11-tool --pin env:...` and read by the Java program.
pub const PIN_ENV: &str = "P11WLD_TEST_PIN";

/// `[wld]` and `[log]` tables of both p11wld configurations. Only `WLD_A`
/// is exposed, so the `OTHER` token of the local SoftHSM2 directory stays
/// hidden and every target shows one token. Warnings go to standard error,
/// where the checks' logs keep them.
const WLD_EXTRA: &str = "[wld]\nlabels = [\"WLD_A\"]\npolicy = \"least-sessions\"\n\n\
                         [log]\nlevel = \"warn\"\n";

/// Message that the signing checks sign: fixed, so every run signs the
/// same bytes.
const MESSAGE: &[u8] = b"p11wld conformance check: a message that real clients sign.\n";

/// An X.509 certificate that the checks import next to a key pair.
pub struct Certificate {
    pub label: &'static str,
    pub id: &'static [u8],
    pub der: Vec<u8>,
}

/// Files the checks read.
pub struct Files {
    /// [`MESSAGE`].
    pub message: PathBuf,
    /// SHA-256 digest of [`MESSAGE`], for mechanisms that sign a digest.
    pub digest: PathBuf,
    pub rsa_public_pem: PathBuf,
    pub ec_public_pem: PathBuf,
}

pub struct Setup {
    pub hsms: ThreeHsms,
    pub local: OneSoftHsm,
    /// p11wld configuration over the three HSMs, which the `Wld` target
    /// names. Held so that the file exists until the checks end.
    _wld_config: ConfigFile,
    /// p11wld configuration over the local SoftHSM2 directory, which the
    /// `WldLocal` target names.
    _local_config: ConfigFile,
    /// Directory for the checks' files, removed on drop.
    pub work: TempDir,
    pub files: Files,
    /// Targets in [`TargetKind::ALL`] order.
    pub targets: Vec<Target>,
}

impl Setup {
    /// Sets up the tokens, imports the certificates, and writes the input
    /// files.
    pub fn new() -> Setup {
        let work = tempfile::Builder::new()
            .prefix("p11wld-clients-")
            .tempdir()
            .expect("failed to create a temporary directory for the client checks");
        let files = write_files(work.path());
        let certificates = make_certificates(work.path());

        let local = one_softhsm_with_tokens();
        for serial in &local.wld_serials {
            local
                .softhsm
                .with_user_session(serial, USER_PIN, |session| {
                    import_certificates(session, &certificates)
                });
        }
        let hsms = three_hsm_processes(false);
        for (hsm, serial) in hsms.hsms.iter().zip(&hsms.serials) {
            hsm.softhsm()
                .with_user_session(serial, USER_PIN, |session| {
                    import_certificates(session, &certificates)
                });
        }

        let wld_config = hsms.write_config(WLD_EXTRA);
        let local_config = local.write_config(WLD_EXTRA);
        let targets = make_targets(&hsms, &wld_config, &local_config);
        Setup {
            hsms,
            local,
            _wld_config: wld_config,
            _local_config: local_config,
            work,
            files,
            targets,
        }
    }

    /// Returns a path in the work directory for a file of `target`.
    pub fn path(&self, target: &Target, name: &str) -> PathBuf {
        self.work
            .path()
            .join(format!("{}-{name}", target.kind.key()))
    }
}

fn make_targets(
    hsms: &ThreeHsms,
    wld_config: &ConfigFile,
    local_config: &ConfigFile,
) -> Vec<Target> {
    let first = &hsms.hsms[0];
    let p11wld = paths::p11wld_module();
    vec![
        Target {
            kind: TargetKind::Direct,
            module: paths::softhsm_module(),
            env: vec![(
                SOFTHSM2_CONF.to_owned(),
                first.softhsm().conf_path().display().to_string(),
            )],
        },
        Target {
            kind: TargetKind::WldLocal,
            module: p11wld.clone(),
            env: vec![(
                P11WLD_CONFIG.to_owned(),
                local_config.path().display().to_string(),
            )],
        },
        Target {
            kind: TargetKind::Member,
            module: paths::p11kit_client_module(),
            env: vec![(P11_KIT_SERVER_ADDRESS.to_owned(), first.address())],
        },
        Target {
            kind: TargetKind::Wld,
            module: p11wld,
            env: vec![(
                P11WLD_CONFIG.to_owned(),
                wld_config.path().display().to_string(),
            )],
        },
    ]
}

fn write_files(dir: &Path) -> Files {
    let files = Files {
        message: dir.join("message.bin"),
        digest: dir.join("message.sha256"),
        rsa_public_pem: dir.join("rsa-public.pem"),
        ec_public_pem: dir.join("ec-public.pem"),
    };
    write_file(&files.message, MESSAGE);
    write_file(&files.digest, keys::sha256(MESSAGE));
    write_file(
        &files.rsa_public_pem,
        include_str!("../data/rsa-2048.pub.pem"),
    );
    write_file(
        &files.ec_public_pem,
        include_str!("../data/ec-p256.pub.pem"),
    );
    files
}

/// Makes a self-signed certificate for each key pair of the key set with
/// `openssl req -x509`. Each run makes new ones (with random serial
/// numbers), and every token of the run gets the same ones.
fn make_certificates(dir: &Path) -> Vec<Certificate> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    [
        (keys::RSA_LABEL, keys::RSA_ID, "rsa-2048.pem"),
        (keys::EC_LABEL, keys::EC_ID, "ec-p256.pem"),
    ]
    .into_iter()
    .map(|(label, id, key_file)| {
        let out = dir.join(format!("{label}.crt.der"));
        let result = run(Command::new("openssl")
            .args(["req", "-x509", "-new", "-days", "3650", "-outform", "DER"])
            .arg("-subj")
            .arg(format!("/CN=p11wld test {label}"))
            .arg("-key")
            .arg(data.join(key_file))
            .arg("-out")
            .arg(&out)
            .env_remove("OPENSSL_CONF"));
        assert!(
            result.success(),
            "openssl req -x509 failed to make the certificate of {label} ({}); install openssl",
            result.ending()
        );
        let der =
            std::fs::read(&out).unwrap_or_else(|e| panic!("failed to read {}: {e}", out.display()));
        Certificate { label, id, der }
    })
    .collect()
}

/// Creates a token object for each certificate in `session`, which must be
/// a read-write session logged in as the user.
fn import_certificates(session: &Session, certificates: &[Certificate]) {
    for certificate in certificates {
        let fields = CertificateFields::parse(&certificate.der).unwrap_or_else(|| {
            panic!(
                "the certificate of {} is not a DER X.509 certificate",
                certificate.label
            )
        });
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(certificate.label.as_bytes().to_vec()),
            Attribute::Id(certificate.id.to_vec()),
            Attribute::Subject(fields.subject),
            Attribute::Issuer(fields.issuer),
            Attribute::SerialNumber(fields.serial_number),
            Attribute::Value(certificate.der.clone()),
        ];
        if let Err(error) = session.create_object(&template) {
            panic!(
                "C_CreateObject failed for the certificate of {}: {error}",
                certificate.label
            );
        }
    }
}

/// The fields of an X.509 certificate that PKCS#11 stores in attributes of
/// its certificate object, each as its whole DER encoding.
#[derive(Debug, PartialEq, Eq)]
pub struct CertificateFields {
    pub serial_number: Vec<u8>,
    pub issuer: Vec<u8>,
    pub subject: Vec<u8>,
}

impl CertificateFields {
    /// Parses `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
    /// [0] version OPTIONAL, serialNumber INTEGER, signature, issuer Name,
    /// validity, subject Name, ... }, ... }` (RFC 5280, section 4.1).
    pub fn parse(der: &[u8]) -> Option<CertificateFields> {
        let (certificate, _) = Element::read(der)?;
        let (tbs, _) = Element::read(certificate.content)?;
        let mut rest = tbs.content;
        let mut next = || {
            let (element, after) = Element::read(rest)?;
            rest = after;
            Some(element)
        };
        let mut serial_number = next()?;
        if serial_number.tag == 0xa0 {
            serial_number = next()?;
        }
        let _signature = next()?;
        let issuer = next()?;
        let _validity = next()?;
        let subject = next()?;
        let valid = serial_number.tag == 0x02 && issuer.tag == 0x30 && subject.tag == 0x30;
        valid.then(|| CertificateFields {
            serial_number: serial_number.encoding.to_vec(),
            issuer: issuer.encoding.to_vec(),
            subject: subject.encoding.to_vec(),
        })
    }
}

/// One DER element: its tag, its whole encoding and its content.
struct Element<'a> {
    tag: u8,
    encoding: &'a [u8],
    content: &'a [u8],
}

impl<'a> Element<'a> {
    /// Reads the element at the start of `data` and returns it with the
    /// bytes after it. Supports one-byte tags and definite lengths, which
    /// is all DER uses in certificates.
    fn read(data: &'a [u8]) -> Option<(Element<'a>, &'a [u8])> {
        let tag = *data.first()?;
        let first = *data.get(1)?;
        let (length, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > std::mem::size_of::<usize>() {
                return None;
            }
            let bytes = data.get(2..2 + count)?;
            let length = bytes
                .iter()
                .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
            (length, 2 + count)
        };
        let end = header.checked_add(length)?;
        let encoding = data.get(..end)?;
        let element = Element {
            tag,
            encoding,
            content: &encoding[header..],
        };
        Some((element, &data[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_fields_found() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 }, INTEGER 5, SEQUENCE {},
        // SEQUENCE { 0x01 }, SEQUENCE {}, SEQUENCE { 0x02 } } }
        let tbs: &[u8] = &[
            0xa0, 0x03, 0x02, 0x01, 0x02, // version
            0x02, 0x01, 0x05, // serial number
            0x30, 0x00, // signature
            0x30, 0x01, 0x01, // issuer
            0x30, 0x00, // validity
            0x30, 0x01, 0x02, // subject
        ];
        let mut der = vec![0x30, tbs.len() as u8 + 2, 0x30, tbs.len() as u8];
        der.extend_from_slice(tbs);
        let fields = CertificateFields::parse(&der).expect("the structure parses");
        assert_eq!(fields.serial_number, [0x02, 0x01, 0x05]);
        assert_eq!(fields.issuer, [0x30, 0x01, 0x01]);
        assert_eq!(fields.subject, [0x30, 0x01, 0x02]);
    }

    #[test]
    fn truncated_certificate_rejected() {
        assert_eq!(CertificateFields::parse(&[0x30, 0x05, 0x30, 0x00]), None);
        assert_eq!(CertificateFields::parse(&[]), None);
    }

    #[test]
    fn long_form_length_read() {
        let mut data = vec![0x04, 0x81, 0x80];
        data.extend(std::iter::repeat_n(0xaa, 0x80));
        data.push(0x05);
        let (element, rest) = Element::read(&data).expect("the element parses");
        assert_eq!(element.content.len(), 0x80);
        assert_eq!(rest, [0x05]);
    }
}
