//! A private key from PEM, in every form OpenSSL writes one: PKCS#8 (`PRIVATE KEY`),
//! PKCS#1 (`RSA PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`), in the clear; encrypted
//! PKCS#8 (`ENCRYPTED PRIVATE KEY`: PBES2 with PBKDF2 or scrypt, and AES-CBC or
//! DES-EDE3-CBC, which OpenSSL 3's `req -newkey` uses); and the legacy encryption of
//! PKCS#1 and SEC1 keys (`Proc-Type: 4,ENCRYPTED` with `DEK-Info`: OpenSSL's
//! `EVP_BytesToKey` with MD5, and AES-CBC or DES-EDE3-CBC), as the predecessor read
//! them through PHP's OpenSSL.

use aes::{Aes128, Aes192, Aes256};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use des::TdesEde3;
use md5::{Digest, Md5};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

/// Why no key came out of the PEM sections.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No section holds a private key.
    #[error(
        "no private key (expected a PEM section PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY or ENCRYPTED PRIVATE KEY)"
    )]
    Missing,
    /// The key is encrypted and no passphrase was given.
    #[error("the private key is encrypted: set passphrase")]
    NeedsPassphrase,
    /// The passphrase does not decrypt it.
    #[error("cannot decrypt the private key: wrong passphrase")]
    WrongPassphrase,
    /// An encryption this reader does not know.
    #[error("the private key is encrypted with {0}, which is not supported (AES-128/192/256-CBC and DES-EDE3-CBC are)")]
    Unsupported(String),
    /// The encrypted key's structure is broken.
    #[error("the encrypted private key is malformed: {0}")]
    Malformed(String),
}

/// The first private key among `sections`, decrypted with `passphrase` if it is encrypted.
pub fn private_key(sections: &[pem::Pem], passphrase: Option<&str>) -> Result<PrivateKeyDer<'static>, KeyError> {
    for section in sections {
        let der = section.contents().to_vec();
        let tag = section.tag();
        if !matches!(
            tag,
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY"
        ) {
            continue;
        }
        let passphrase = || passphrase.ok_or(KeyError::NeedsPassphrase);
        if tag == "ENCRYPTED PRIVATE KEY" {
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| KeyError::Malformed(e.to_string()))?;
            let document = info.decrypt(passphrase()?).map_err(|error| match error {
                pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::UnsupportedAlgorithm { oid }) => {
                    KeyError::Unsupported(oid.to_string())
                }
                _ => KeyError::WrongPassphrase,
            })?;
            return Ok(PrivatePkcs8KeyDer::from(document.as_bytes().to_vec()).into());
        }
        let der = match section.headers().get("DEK-Info") {
            Some(dek_info) => decrypt_legacy(&der, dek_info, passphrase()?)?,
            None => der,
        };
        return Ok(match tag {
            "PRIVATE KEY" => PrivatePkcs8KeyDer::from(der).into(),
            "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(der).into(),
            _ => PrivateSec1KeyDer::from(der).into(),
        });
    }
    Err(KeyError::Missing)
}

/// Decrypts a key body under OpenSSL's legacy PEM encryption: `dek_info` is
/// `CIPHER,IV-IN-HEX`; the key is `EVP_BytesToKey(MD5, passphrase, salt = IV[..8], 1 round)`.
fn decrypt_legacy(body: &[u8], dek_info: &str, passphrase: &str) -> Result<Vec<u8>, KeyError> {
    let (cipher, iv_hex) = dek_info
        .split_once(',')
        .ok_or_else(|| KeyError::Malformed(format!("DEK-Info {dek_info:?}")))?;
    let iv = hex(iv_hex.trim()).ok_or_else(|| KeyError::Malformed(format!("DEK-Info {dek_info:?}")))?;
    let cipher = cipher.trim().to_ascii_uppercase();
    let (key_len, iv_len) = match cipher.as_str() {
        "AES-128-CBC" => (16, 16),
        "AES-192-CBC" => (24, 16),
        "AES-256-CBC" => (32, 16),
        "DES-EDE3-CBC" => (24, 8),
        _ => return Err(KeyError::Unsupported(cipher)),
    };
    if iv.len() != iv_len {
        return Err(KeyError::Malformed(format!(
            "DEK-Info {dek_info:?}: IV of {} bytes",
            iv.len()
        )));
    }
    let key = bytes_to_key(passphrase.as_bytes(), &iv[..8], key_len);
    let decrypted = match cipher.as_str() {
        "AES-128-CBC" => cbc_decrypt::<Aes128>(&key, &iv, body),
        "AES-192-CBC" => cbc_decrypt::<Aes192>(&key, &iv, body),
        "AES-256-CBC" => cbc_decrypt::<Aes256>(&key, &iv, body),
        _ => cbc_decrypt::<TdesEde3>(&key, &iv, body),
    };
    // A wrong passphrase almost always breaks the padding; when it does not, the result
    // is not DER (a SEQUENCE), and rustls would report a key that does not fit.
    decrypted
        .filter(|der| der.first() == Some(&0x30))
        .ok_or(KeyError::WrongPassphrase)
}

fn cbc_decrypt<C>(key: &[u8], iv: &[u8], body: &[u8]) -> Option<Vec<u8>>
where
    C: cbc::cipher::BlockDecrypt + cbc::cipher::BlockCipher + cbc::cipher::KeyInit,
    cbc::Decryptor<C>: KeyIvInit + BlockDecryptMut,
{
    let decryptor = cbc::Decryptor::<C>::new_from_slices(key, iv).ok()?;
    decryptor.decrypt_padded_vec_mut::<Pkcs7>(body).ok()
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one round: MD5 blocks of (previous block,
/// passphrase, salt), concatenated to `len` bytes.
fn bytes_to_key(passphrase: &[u8], salt: &[u8], len: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(len + 16);
    let mut block: Vec<u8> = Vec::new();
    while key.len() < len {
        let mut md5 = Md5::new();
        md5.update(&block);
        md5.update(passphrase);
        md5.update(salt);
        block = md5.finalize().to_vec();
        key.extend_from_slice(&block);
    }
    key.truncate(len);
    key
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_key_matches_openssl() {
        // `openssl enc -aes-256-cbc -pass pass:secret -S 0102030405060708 -P -md md5`
        // (OpenSSL 3.0.x) prints this key.
        let key = bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8], 32);
        assert_eq!(
            key,
            hex("C9E5A1BD216DBE1317E230CEF48F38EE7F0E17AD64022144BCCEC4A1AA2879AB").unwrap()
        );
        assert_eq!(bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8], 24), key[..24]);
    }

    #[test]
    fn legacy_headers_are_checked() {
        assert_eq!(
            decrypt_legacy(b"", "AES-256-CBC,00", "p").unwrap_err(),
            KeyError::Malformed("DEK-Info \"AES-256-CBC,00\": IV of 1 bytes".into())
        );
        assert_eq!(
            decrypt_legacy(b"", "CAMELLIA-256-CBC,00", "p").unwrap_err(),
            KeyError::Unsupported("CAMELLIA-256-CBC".into())
        );
        assert!(matches!(
            decrypt_legacy(b"", "AES-128-CBC", "p"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            decrypt_legacy(b"", "AES-128-CBC,zz", "p"),
            Err(KeyError::Malformed(_))
        ));
        assert_eq!(
            decrypt_legacy(&[0; 16], "AES-128-CBC,000102030405060708090a0b0c0d0e0f", "p"),
            Err(KeyError::WrongPassphrase)
        );
    }
}
