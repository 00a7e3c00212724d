//! Just enough DER to read back the CA certificate plinth wrote: its subject (so that the
//! certificates it signs name it as their issuer, byte for byte) and its public key (so that a
//! key file that does not belong to it is refused). Never panics: every length is checked.

use rcgen::{DistinguishedName, DnType, DnValue};

const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// `[0] EXPLICIT`, the version of a v3 certificate.
const VERSION: u8 = 0xa0;

/// One element: its tag, its contents, and its whole encoding.
#[derive(Clone, Copy, Debug)]
struct Element<'a> {
    tag: u8,
    contents: &'a [u8],
    raw: &'a [u8],
}

/// The parts of a certificate plinth needs.
#[derive(Debug)]
pub(crate) struct CertificateParts<'a> {
    /// The subject `Name`, as encoded.
    pub(crate) subject: &'a [u8],
    /// The `SubjectPublicKeyInfo`, as encoded.
    pub(crate) public_key_info: &'a [u8],
}

/// Finds the subject and the public key in a DER certificate.
pub(crate) fn certificate(der: &[u8]) -> Result<CertificateParts<'_>, &'static str> {
    let mut input = der;
    let certificate = expect(&mut input, SEQUENCE)?;
    if !input.is_empty() {
        return Err("there are bytes after the certificate");
    }
    let mut body = certificate.contents;
    let mut tbs = expect(&mut body, SEQUENCE)?.contents;
    let mut first = next(&mut tbs)?;
    if first.tag == VERSION {
        first = next(&mut tbs)?;
    }
    if first.tag != INTEGER {
        return Err("the serial number is missing");
    }
    let _signature = expect(&mut tbs, SEQUENCE)?;
    let _issuer = expect(&mut tbs, SEQUENCE)?;
    let _validity = expect(&mut tbs, SEQUENCE)?;
    let subject = expect(&mut tbs, SEQUENCE)?;
    let public_key_info = expect(&mut tbs, SEQUENCE)?;
    Ok(CertificateParts { subject: subject.raw, public_key_info: public_key_info.raw })
}

/// A `Name` as rcgen writes it: one attribute per relative name, each a UTF8String or a
/// PrintableString. Anything else is refused, since rcgen could not write it back the same.
pub(crate) fn name(encoded: &[u8]) -> Result<DistinguishedName, &'static str> {
    let mut input = encoded;
    let mut rdns = expect(&mut input, SEQUENCE)?.contents;
    let mut name = DistinguishedName::new();
    while !rdns.is_empty() {
        let mut set = expect(&mut rdns, SET)?.contents;
        let mut attribute = expect(&mut set, SEQUENCE)?.contents;
        if !set.is_empty() {
            return Err("a relative name has more than one attribute");
        }
        let oid = expect(&mut attribute, OID)?;
        let value = next(&mut attribute)?;
        let text = std::str::from_utf8(value.contents).map_err(|_| "a name is not valid text")?;
        let value = match value.tag {
            UTF8_STRING => DnValue::Utf8String(text.to_owned()),
            PRINTABLE_STRING => {
                DnValue::PrintableString(text.try_into().map_err(|_| "a PrintableString has other characters")?)
            }
            _ => return Err("a name is neither a UTF8String nor a PrintableString"),
        };
        let kind = DnType::from_oid(&arcs(oid.contents)?);
        if name.get(&kind).is_some() {
            return Err("a name has the same attribute twice");
        }
        name.push(kind, value);
    }
    Ok(name)
}

/// The arcs of an object identifier.
fn arcs(encoded: &[u8]) -> Result<Vec<u64>, &'static str> {
    let mut arcs = Vec::with_capacity(encoded.len() + 1);
    let mut value: u64 = 0;
    for (i, &byte) in encoded.iter().enumerate() {
        value = value.checked_mul(128).ok_or("an object identifier is too long")? | u64::from(byte & 0x7f);
        if byte & 0x80 != 0 {
            if i + 1 == encoded.len() {
                return Err("an object identifier is cut short");
            }
            continue;
        }
        if arcs.is_empty() {
            let first = (value / 40).min(2);
            arcs.push(first);
            arcs.push(value - first * 40);
        } else {
            arcs.push(value);
        }
        value = 0;
    }
    if arcs.is_empty() {
        return Err("an object identifier is empty");
    }
    Ok(arcs)
}

fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Result<Element<'a>, &'static str> {
    let element = next(input)?;
    if element.tag != tag {
        return Err("the certificate is not laid out as X.509 requires");
    }
    Ok(element)
}

/// Reads the next element and moves past it.
fn next<'a>(input: &mut &'a [u8]) -> Result<Element<'a>, &'static str> {
    let whole = *input;
    let (&tag, rest) = whole.split_first().ok_or("the certificate is cut short")?;
    if tag & 0x1f == 0x1f {
        return Err("the certificate uses a tag X.509 does not");
    }
    let (&first, mut rest) = rest.split_first().ok_or("the certificate is cut short")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err("the certificate has a length DER does not allow");
        }
        let (bytes, after) = rest.split_at_checked(count).ok_or("the certificate is cut short")?;
        rest = after;
        bytes.iter().fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    let (contents, after) = rest.split_at_checked(len).ok_or("the certificate is cut short")?;
    let header = whole.len() - rest.len();
    let raw = &whole[..header + len];
    *input = after;
    Ok(Element { tag, contents, raw })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PublicKeyData};

    use super::*;

    #[test]
    fn a_certificate_gives_back_its_subject_and_key() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "plinth");
        subject.push(DnType::CommonName, "plinth local CA (höst)");
        subject.push(DnType::CountryName, DnValue::PrintableString("DE".try_into().expect("printable")));
        params.distinguished_name = subject.clone();
        let cert = params.self_signed(&key).expect("a certificate");

        let parts = certificate(cert.der()).expect("parts");
        assert_eq!(parts.public_key_info, key.subject_public_key_info());
        let read = name(parts.subject).expect("a name");
        let written: Vec<_> = subject.iter().collect();
        assert_eq!(read.iter().collect::<Vec<_>>(), written);
    }

    #[test]
    fn damaged_input_is_an_error_never_a_panic() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let cert = CertificateParams::default().self_signed(&key).expect("a certificate");
        let der = cert.der().to_vec();
        for len in 0..der.len() {
            assert!(certificate(&der[..len]).is_err(), "{len} bytes");
        }
        let mut longer = der.clone();
        longer.push(0);
        assert!(certificate(&longer).is_err());
        for garbage in [&[0xff, 0xff][..], &[0x30, 0x85, 1, 1, 1, 1, 1], &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]] {
            assert!(certificate(garbage).is_err());
            assert!(name(garbage).is_err());
        }
    }

    #[test]
    fn object_identifiers_decode() {
        assert_eq!(arcs(&[0x55, 0x04, 0x03]), Ok(vec![2, 5, 4, 3]));
        assert_eq!(arcs(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]), Ok(vec![1, 2, 840, 10045, 2, 1]));
        assert!(arcs(&[]).is_err());
        assert!(arcs(&[0x86]).is_err());
    }
}
