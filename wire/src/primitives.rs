//! The only place where Nix wire bytes are encoded and decoded.
//!
//! ```text
//! u64     8 bytes little endian (counts, lengths, enums, booleans, times)
//! bytes   u64 n · n bytes · (8 - n % 8) % 8 zero bytes
//! list    u64 count · count elements (sets: sorted, but unsorted is accepted)
//! ```
//!
//! Readers are async over any `AsyncRead`; each takes the wire field name so
//! errors say what was being read. Writers append to a `Vec<u8>` that the
//! caller flushes in one `write_all`, so a message is never half-encoded.

use std::collections::BTreeSet;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::store_path::StorePath;
use super::{Error, Limits, Result};

pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub fn put_bool(buf: &mut Vec<u8>, v: bool) {
    put_u64(buf, u64::from(v));
}

pub fn padding_len(n: u64) -> usize {
    ((8 - n % 8) % 8) as usize
}

pub fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u64(buf, b.len() as u64);
    buf.extend_from_slice(b);
    buf.resize(buf.len() + padding_len(b.len() as u64), 0);
}

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_bytes(buf, s.as_bytes());
}

pub fn put_strs<'a>(buf: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a [u8]>) {
    put_u64(buf, items.len() as u64);
    for i in items {
        put_bytes(buf, i);
    }
}

pub fn put_strings(buf: &mut Vec<u8>, items: &[String]) {
    put_strs(buf, items.iter().map(|s| s.as_bytes()));
}

pub fn put_byte_list(buf: &mut Vec<u8>, items: &[Vec<u8>]) {
    put_strs(buf, items.iter().map(|s| s.as_slice()));
}

pub fn put_paths<'a>(buf: &mut Vec<u8>, paths: impl ExactSizeIterator<Item = &'a StorePath>) {
    put_strs(buf, paths.map(|p| p.as_str().as_bytes()));
}

/// An optional store path travels as a string, empty meaning none.
pub fn put_opt_path(buf: &mut Vec<u8>, p: Option<&StorePath>) {
    put_str(buf, p.map(StorePath::as_str).unwrap_or(""));
}

pub async fn read_u64<R: AsyncRead + Unpin>(r: &mut R, field: &'static str) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .await
        .map_err(|e| Error::read(field, e))?;
    Ok(u64::from_le_bytes(b))
}

/// Reads a u64 at a message boundary: `None` on a clean end of stream
/// (zero bytes), an error on a partial integer.
pub async fn read_u64_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
) -> Result<Option<u64>> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        let n = r
            .read(&mut b[got..])
            .await
            .map_err(|e| Error::read(field, e))?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::UnexpectedEof { field })
            };
        }
        got += n;
    }
    Ok(Some(u64::from_le_bytes(b)))
}

/// Booleans: Nix writes 0/1 and reads any non-zero value as true.
pub async fn read_bool<R: AsyncRead + Unpin>(r: &mut R, field: &'static str) -> Result<bool> {
    Ok(read_u64(r, field).await? != 0)
}

/// Reads a length and checks it against `max` before allocating.
pub async fn read_len<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    max: usize,
) -> Result<usize> {
    let len = read_u64(r, field).await?;
    if len > max as u64 {
        return Err(Error::TooLong {
            field,
            len,
            max: max as u64,
        });
    }
    Ok(len as usize)
}

/// Reads and checks the zero padding after `n` payload bytes.
pub async fn read_padding<R: AsyncRead + Unpin>(
    r: &mut R,
    n: u64,
    field: &'static str,
) -> Result<()> {
    let pad = padding_len(n);
    if pad > 0 {
        let mut p = [0u8; 8];
        r.read_exact(&mut p[..pad])
            .await
            .map_err(|e| Error::read(field, e))?;
        if p[..pad].iter().any(|&b| b != 0) {
            return Err(Error::BadPadding { field });
        }
    }
    Ok(())
}

/// Most bytes of a string allocated before they arrive: a peer that
/// announces a long string and sends nothing costs this much, not the
/// string limit.
pub const STRING_PREALLOC: usize = 16 << 10;

/// A byte string of at most `max` bytes. Memory grows with the bytes that
/// actually arrive (at most [`STRING_PREALLOC`] ahead of them), not with
/// the announced length.
pub async fn read_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    max: usize,
) -> Result<Vec<u8>> {
    let len = read_len(r, field, max).await?;
    let mut v = Vec::with_capacity(len.min(STRING_PREALLOC));
    let got = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut v)
        .await
        .map_err(|e| Error::read(field, e))?;
    if got < len {
        return Err(Error::UnexpectedEof { field });
    }
    read_padding(r, len as u64, field).await?;
    Ok(v)
}

/// A byte string of any length of which only the first `keep` bytes are
/// kept: the rest is read and dropped as it arrives, so memory stays at
/// `keep` whatever the peer announces. Returns the bytes kept and how many
/// were dropped.
pub async fn read_bytes_capped<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    keep: usize,
) -> Result<(Vec<u8>, u64)> {
    let len = read_u64(r, field).await?;
    let kept = len.min(keep as u64);
    let mut v = Vec::with_capacity((kept as usize).min(STRING_PREALLOC));
    let got = (&mut *r)
        .take(kept)
        .read_to_end(&mut v)
        .await
        .map_err(|e| Error::read(field, e))?;
    let dropped = tokio::io::copy(&mut (&mut *r).take(len - kept), &mut tokio::io::sink())
        .await
        .map_err(|e| Error::read(field, e))?;
    if got as u64 + dropped < len {
        return Err(Error::UnexpectedEof { field });
    }
    read_padding(r, len, field).await?;
    Ok((v, dropped))
}

pub async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    max: usize,
) -> Result<String> {
    String::from_utf8(read_bytes(r, field, max).await?).map_err(|_| Error::NotUtf8 { field })
}

pub async fn read_byte_list<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<Vec<u8>>> {
    let n = read_len(r, field, limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        v.push(read_bytes(r, field, limits.max_string_bytes).await?);
    }
    Ok(v)
}

pub async fn read_strings<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<String>> {
    let n = read_len(r, field, limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        v.push(read_string(r, field, limits.max_string_bytes).await?);
    }
    Ok(v)
}

pub async fn read_path<R: AsyncRead + Unpin>(r: &mut R, field: &'static str) -> Result<StorePath> {
    StorePath::parse(&read_string(r, field, Limits::MAX_PATH_BYTES).await?)
}

/// Optional store path: the empty string means none.
pub async fn read_opt_path<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
) -> Result<Option<StorePath>> {
    let s = read_string(r, field, Limits::MAX_PATH_BYTES).await?;
    if s.is_empty() {
        Ok(None)
    } else {
        StorePath::parse(&s).map(Some)
    }
}

/// Optional short string (content address, ...): the empty string means none.
pub async fn read_opt_string<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
) -> Result<Option<String>> {
    let s = read_string(r, field, Limits::MAX_PATH_BYTES).await?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

pub async fn read_paths<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    limits: &Limits,
) -> Result<Vec<StorePath>> {
    let n = read_len(r, field, limits.max_collection_len).await?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        v.push(read_path(r, field).await?);
    }
    Ok(v)
}

pub async fn read_path_set<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    limits: &Limits,
) -> Result<BTreeSet<StorePath>> {
    Ok(read_paths(r, field, limits).await?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_padded_to_eight_bytes() {
        let mut b = Vec::new();
        put_str(&mut b, "hi");
        assert_eq!(b, [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 0, 0, 0, 0]);
        let mut e = Vec::new();
        put_str(&mut e, "");
        assert_eq!(e, [0u8; 8]);
    }

    #[tokio::test]
    async fn nonzero_padding_is_rejected() {
        let bytes = [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 1, 0, 0, 0];
        let err = read_bytes(&mut &bytes[..], "x", 100).await.unwrap_err();
        assert!(matches!(err, Error::BadPadding { .. }), "{err}");
    }

    #[tokio::test]
    async fn lengths_over_the_limit_are_rejected_before_allocating() {
        let mut b = Vec::new();
        put_u64(&mut b, u64::MAX);
        let err = read_bytes(&mut &b[..], "x", 100).await.unwrap_err();
        assert!(matches!(err, Error::TooLong { .. }), "{err}");
    }

    /// Strings longer than the preallocation grow as their bytes arrive; a
    /// string cut short is an end of stream, whatever length it announced.
    #[tokio::test]
    async fn strings_beyond_the_preallocation_read_whole_or_report_eof() {
        let long = vec![b'x'; STRING_PREALLOC * 3 + 5];
        let mut b = Vec::new();
        put_bytes(&mut b, &long);
        let got = read_bytes(&mut &b[..], "x", long.len()).await.unwrap();
        assert_eq!(got, long);
        let err = read_bytes(&mut &b[..b.len() - 20], "x", long.len())
            .await
            .unwrap_err();
        assert!(err.is_eof(), "{err}");
    }

    /// A reader that records the largest buffer it was offered: what the
    /// caller had allocated for the bytes still to come.
    struct Spy<'a> {
        data: &'a [u8],
        largest_offer: usize,
    }

    impl tokio::io::AsyncRead for Spy<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.largest_offer = self.largest_offer.max(buf.remaining());
            let n = buf.remaining().min(self.data.len());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Caught by the fuzzers' allocation budget: a peer announcing a 60 MiB
    /// string and sending 9 bytes made the reader allocate 60 MiB.
    #[tokio::test]
    async fn an_announced_length_is_not_allocated_before_the_bytes_arrive() {
        let mut announced = Vec::new();
        put_u64(&mut announced, 60 << 20);
        announced.extend_from_slice(b"only this");
        let mut spy = Spy {
            data: &announced,
            largest_offer: 0,
        };
        let err = read_bytes(&mut spy, "x", 64 << 20).await.unwrap_err();
        assert!(err.is_eof(), "{err}");
        assert!(
            spy.largest_offer <= STRING_PREALLOC,
            "{} bytes allocated ahead of the data",
            spy.largest_offer
        );
    }

    #[tokio::test]
    async fn clean_eof_is_distinguished_from_a_partial_integer() {
        assert_eq!(read_u64_or_eof(&mut &[][..], "cmd").await.unwrap(), None);
        let err = read_u64_or_eof(&mut &[1u8, 2][..], "cmd")
            .await
            .unwrap_err();
        assert!(err.is_eof());
    }
}
