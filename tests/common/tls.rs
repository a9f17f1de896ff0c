//! TLS for the tests: a throw-away PKI made with `openssl` (a CA, a server certificate
//! for 127.0.0.1, a client certificate) and a rustls client stream a [`Client`] speaks over.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{TempDir, Transport};

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, made
/// with `openssl`, in a temp dir.
pub struct Pki {
    dir: TempDir,
}

/// Runs `openssl` with `args` in `dir`; panics with its error output if it fails.
pub fn openssl(dir: &TempDir, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("cannot run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let openssl = |args: &[&str]| openssl(&dir, args);
        let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let mut args = vec!["req", "-x509"];
        args.extend(new_key);
        args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=wsplug test CA",
        ]);
        openssl(&args);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for name in ["server", "client"] {
            let key = format!("{name}-key.pem");
            let csr = format!("{name}.csr");
            let cert = format!("{name}.pem");
            let ext = format!("{name}.ext");
            let subject = format!("/CN={}", if name == "server" { "127.0.0.1" } else { "client" });
            let mut args = vec!["req"];
            args.extend(new_key);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ]);
        }
        openssl(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "server-key.pem",
            "-out",
            "server-key-encrypted.pem",
            "-passout",
            "pass:secret",
        ]);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let combined = read("server.pem") + &read("ca.pem") + &read("server-key.pem");
        std::fs::write(dir.join("combined.pem"), combined).unwrap();
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A TLS client config that trusts the test CA, with the client certificate if asked.
    pub fn client_config(&self, with_certificate: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = if with_certificate {
            let cert = CertificateDer::from_pem_file(self.path("client.pem")).unwrap();
            let key = PrivateKeyDer::from_pem_file(self.path("client-key.pem")).unwrap();
            builder.with_client_auth_cert(vec![cert], key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Transport for TlsStream {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// A TLS connection to `addr` for the name 127.0.0.1 (the handshake happens on first use).
pub fn tls_stream(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(config, name).expect("TLS client setup");
    let tcp = TcpStream::connect(addr).expect("cannot connect to the server");
    rustls::StreamOwned::new(connection, tcp)
}
