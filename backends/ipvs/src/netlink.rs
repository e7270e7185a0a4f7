//! Reading the attributes of generic netlink answers. Sending requests, and the attributes
//! they carry, is kube-proxy-netlink's.

use netlink_packet_core::{NlaBuffer, NlasIterator, NLA_HEADER_SIZE};

use crate::Error;

/// The attributes in `bytes`, by kind (flags masked off), as (kind, value) pairs.
pub(crate) fn attrs(bytes: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Error>> {
    NlasIterator::new(bytes).map(|nla| {
        let nla: NlaBuffer<&[u8]> = nla.map_err(|e| Error::Malformed(format!("{e:#}")))?;
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        // The buffer's own `value()` borrows the buffer; the slice it wraps lives longer.
        nla.into_inner()
            .get(NLA_HEADER_SIZE..len)
            .map(|value| (kind, value))
            .ok_or_else(|| Error::Malformed(format!("attribute {kind} of length {len}")))
    })
}

/// Reads a fixed-size attribute value.
pub(crate) fn fixed<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], Error> {
    value.try_into().map_err(|_| {
        Error::Malformed(format!(
            "{what}: {} bytes where {N} were expected",
            value.len()
        ))
    })
}

/// Reads a native-endian `u16` attribute value.
pub(crate) fn u16_value(value: &[u8], what: &str) -> Result<u16, Error> {
    fixed(value, what).map(u16::from_ne_bytes)
}

/// Reads a native-endian `u32` attribute value.
pub(crate) fn u32_value(value: &[u8], what: &str) -> Result<u32, Error> {
    fixed(value, what).map(u32::from_ne_bytes)
}

/// The value of an attribute the kernel always sends, or an error naming it.
pub(crate) fn required<T>(value: Option<T>, what: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::Malformed(format!("{what} missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs_of(bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, Error> {
        attrs(bytes).collect()
    }

    #[test]
    fn attributes_are_read_with_their_lengths_checked() {
        let two = [6, 0, 1, 0, 0xaa, 0xbb, 0, 0, 4, 0, 2, 0x80];
        let read = attrs_of(&two).unwrap();
        assert_eq!(read, [(1, &[0xaa, 0xbb][..]), (2, &[][..])], "flags masked");
        assert!(
            attrs_of(&[9, 0, 1, 0, 0]).is_err(),
            "longer than the buffer"
        );
        assert!(attrs_of(&[2, 0, 1, 0]).is_err(), "shorter than its header");
        assert!(matches!(u32_value(&[1, 2], "x"), Err(Error::Malformed(_))));
    }
}
