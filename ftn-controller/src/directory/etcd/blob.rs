//! Values of any size in etcd, which refuses a request over `--max-request-bytes` (1.5 MiB by
//! default) and a transaction over `--max-txn-ops` (128).
//!
//! A value is JSON compressed with zstd (with its content checksum), behind the prefix
//! [`ZSTD`]. One that is still larger than [`INLINE_BYTES`] is cut into chunks of at most
//! [`CHUNK_BYTES`], each written under `P/chunks/<name>/<index, 6 digits>` in a request of its
//! own *before* the transaction that writes the key naming them; the key then holds a
//! [`Manifest`] behind the prefix [`CHUNKED`]. Chunks nothing names yet are invisible to
//! readers, so a commit stays one atomic transaction whatever its size. A value without either
//! prefix is the plain JSON of earlier versions (events and declarations), and is read as such.

use super::*;

/// Compressed JSON follows.
pub(super) const ZSTD: &[u8] = b"ftn:zstd\n";
/// A JSON [`Manifest`] follows.
pub(super) const CHUNKED: &[u8] = b"ftn:chunks\n";
/// Values up to this size stay in their key. Three of them (head, log entry, events) keep a
/// commit well under etcd's default request limit.
pub(super) const INLINE_BYTES: usize = 384 << 10;
/// One chunk (one request of its own).
pub(super) const CHUNK_BYTES: usize = 1 << 20;
/// zstd's fastest levels compress the directory's JSON about tenfold; level 1 keeps a
/// 10,000-resource failover's encoding within a few milliseconds.
const LEVEL: i32 = 1;

/// Where the chunks of a value are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// Key prefix of the chunks (`P/chunks/<name>/`).
    pub(super) base: String,
    pub(super) chunks: u32,
    /// Compressed bytes in all.
    pub(super) bytes: u64,
}

/// An encoded value: what goes into its key, and the chunks to write first.
pub(super) struct Blob {
    pub(super) value: Vec<u8>,
    pub(super) chunks: Vec<(String, Vec<u8>)>,
}

/// A value as read from its key.
pub(super) enum Stored<T> {
    Value(T),
    Chunks(Manifest),
}

/// Encodes `v`; `base` names its chunks if it needs any (`P/chunks/<name>/`).
pub(super) fn encode<T: Serialize + ?Sized>(v: &T, base: &str) -> Result<Blob, DirectoryError> {
    let fail = |e: std::io::Error| DirectoryError::Etcd(format!("encoding {base}: {e}"));
    let mut enc = zstd::stream::Encoder::new(Vec::new(), LEVEL).map_err(fail)?;
    enc.include_checksum(true).map_err(fail)?;
    serde_json::to_writer(&mut enc, v).map_err(|e| fail(e.into()))?;
    let z = enc.finish().map_err(fail)?;
    if z.len() <= INLINE_BYTES {
        let mut value = Vec::with_capacity(ZSTD.len() + z.len());
        value.extend_from_slice(ZSTD);
        value.extend_from_slice(&z);
        return Ok(Blob {
            value,
            chunks: Vec::new(),
        });
    }
    let chunks: Vec<(String, Vec<u8>)> = z
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| (format!("{base}{i:06}"), c.to_vec()))
        .collect();
    let manifest = Manifest {
        base: base.to_owned(),
        chunks: chunks.len() as u32,
        bytes: z.len() as u64,
    };
    let mut value = CHUNKED.to_vec();
    serde_json::to_writer(&mut value, &manifest).map_err(|e| fail(e.into()))?;
    Ok(Blob { value, chunks })
}

/// Reads a key's value: the value itself, or where its chunks are.
pub(super) fn decode<T: DeserializeOwned>(value: &[u8]) -> Result<Stored<T>, String> {
    if let Some(z) = value.strip_prefix(ZSTD) {
        return unpack(z).map(Stored::Value);
    }
    if let Some(m) = value.strip_prefix(CHUNKED) {
        return serde_json::from_slice(m)
            .map(Stored::Chunks)
            .map_err(|e| format!("a chunk manifest that does not read: {e}"));
    }
    serde_json::from_slice(value)
        .map(Stored::Value)
        .map_err(|e| e.to_string())
}

/// Decompresses and parses (the zstd checksum catches a changed or misassembled value).
fn unpack<T: DeserializeOwned>(z: &[u8]) -> Result<T, String> {
    let json = zstd::stream::decode_all(z).map_err(|e| format!("does not decompress: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// The value of a manifest from its chunks (in key order).
pub(super) fn assemble<T: DeserializeOwned>(m: &Manifest, parts: &[Vec<u8>]) -> Result<T, String> {
    if parts.len() != m.chunks as usize {
        return Err(format!(
            "{} of its {} chunks under {} are there (trimmed while it was read?)",
            parts.len(),
            m.chunks,
            m.base
        ));
    }
    let z = parts.concat();
    if z.len() as u64 != m.bytes {
        return Err(format!(
            "its chunks under {} hold {} bytes, the manifest says {}",
            m.base,
            z.len(),
            m.bytes
        ));
    }
    unpack(&z)
}

/// Reads a value whose key held `value`, fetching its chunks (at etcd revision `at`, 0 for the
/// latest) if it has any. `what` names it in errors.
pub(super) async fn read<T: DeserializeOwned>(
    pool: &Pool,
    value: &[u8],
    at: i64,
    what: &str,
) -> Result<T, DirectoryError> {
    let bad = |e: String| DirectoryError::Etcd(format!("{what}: {e}"));
    match decode::<T>(value).map_err(bad)? {
        Stored::Value(v) => Ok(v),
        Stored::Chunks(m) => {
            let mut opts = GetOptions::new().with_prefix();
            if at > 0 {
                opts = opts.with_revision(at);
            }
            let resp = pool
                .call(|c| {
                    let (base, opts) = (m.base.clone(), opts.clone());
                    async move { kv_big(&c).get(base, Some(opts)).await }
                })
                .await
                .map_err(|e| etcd_err(&format!("reading the chunks of {what}"), e))?;
            let parts: Vec<Vec<u8>> = resp.kvs().iter().map(|kv| kv.value().to_vec()).collect();
            assemble(&m, &parts).map_err(bad)
        }
    }
}

/// Writes `chunks`, one request each. With a `fence`, each is written only while the leader
/// key still has that create-revision (a deposed leader writes nothing, not even chunks).
pub(super) async fn put_chunks(
    pool: &Pool,
    keys: &Keys,
    fence: Option<i64>,
    chunks: &[(String, Vec<u8>)],
) -> Result<(), DirectoryError> {
    for (key, bytes) in chunks {
        let mut txn = Txn::new();
        if let Some(f) = fence {
            txn = txn.when([Compare::create_revision(keys.leader(), CompareOp::Equal, f)]);
        }
        let txn = txn.and_then([TxnOp::put(key.clone(), bytes.clone(), None)]);
        let resp = pool
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err(&format!("writing {key}"), e))?;
        if !resp.succeeded() {
            return Err(DirectoryError::Fenced {
                fence: fence.unwrap_or(0),
                leader: "another gateway".into(),
            });
        }
    }
    Ok(())
}

/// Removes chunks written for a value that no key names (a refused commit), as far as etcd
/// answers; what stays is trimmed with the log.
pub(super) async fn drop_chunks(pool: &Pool, blob: &Blob) {
    let Some((first, _)) = blob.chunks.first() else {
        return;
    };
    let base = first
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .to_owned();
    let r = pool
        .call(|mut c| {
            let base = base.clone();
            async move {
                c.delete(base, Some(etcd_client::DeleteOptions::new().with_prefix()))
                    .await
            }
        })
        .await;
    if let Err(e) = r {
        tracing::debug!("etcd: removing unused chunks {base}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_stay_inline_large_ones_are_chunked_and_read_back() {
        let small = vec!["x".to_string(); 10];
        let b = encode(&small, "/p/chunks/t/").unwrap();
        assert!(b.chunks.is_empty() && b.value.starts_with(ZSTD));
        match decode::<Vec<String>>(&b.value).unwrap() {
            Stored::Value(v) => assert_eq!(v, small),
            Stored::Chunks(_) => panic!("small value chunked"),
        }
        // Incompressible content: a pseudo-random string of 3 MiB.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let big: String = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        let b = encode(&big, "/p/chunks/t/").unwrap();
        assert!(b.chunks.len() >= 2, "{} chunks", b.chunks.len());
        assert!(b.chunks.iter().all(|(_, c)| c.len() <= CHUNK_BYTES));
        assert_eq!(b.chunks[1].0, "/p/chunks/t/000001");
        let Stored::Chunks(m) = decode::<String>(&b.value).unwrap() else {
            panic!("large value inline")
        };
        let parts: Vec<Vec<u8>> = b.chunks.iter().map(|(_, c)| c.clone()).collect();
        assert_eq!(assemble::<String>(&m, &parts).unwrap(), big);
        // A missing chunk and a changed byte are errors, not a wrong value.
        let e = assemble::<String>(&m, &parts[1..]).unwrap_err();
        assert!(e.contains("chunks"), "{e}");
        let mut bad = parts.clone();
        bad[0][100] ^= 1;
        assert!(assemble::<String>(&m, &bad).is_err());
    }

    #[test]
    fn plain_json_of_earlier_versions_reads() {
        match decode::<Vec<u32>>(b"[1,2,3]").unwrap() {
            Stored::Value(v) => assert_eq!(v, [1, 2, 3]),
            Stored::Chunks(_) => panic!(),
        }
        assert!(decode::<Vec<u32>>(b"ftn:zstd\nnot zstd").is_err());
    }
}
