//! [`HashReader`]: a plain RESP2 connection to one Redis node that reads many
//! hashes (`HGETALL`, pipelined) as fast as the bytes arrive.
//!
//! A restore reads millions of hash fields. redis-rs parses every reply element
//! through its general streaming parser into an owned value (~200–300 ns each
//! here: a quarter of a shard's CPU in a restart); the replies of `HGETALL` are
//! only arrays of bulk strings, which this hands over as borrowed slices. The
//! commands are still encoded by redis-rs; only the read side is this module.
//! Plain TCP only (no TLS); anything it does not expect is an error, and the
//! caller retries.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::StoreError;

/// How to reach and log in to one node.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct NodeAddr {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
}

impl std::fmt::Debug for NodeAddr {
    /// Everything but the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAddr")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .finish()
    }
}

/// One connection; see the module doc.
#[derive(Debug)]
pub(crate) struct HashReader {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    /// Start of the bytes still needed (`anchor <= pos`): a field stays in
    /// `buf` until its value has been read too.
    anchor: usize,
    timeout: Duration,
}

/// One `HGETALL` per key, in order: what a load asks of each chunk, over a
/// [`HashReader`] or through redis-rs.
pub(crate) fn hgetall_pipeline(keys: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HGETALL").arg(key);
    }
    pipe
}

/// Redis's own limit on a bulk string (`proto-max-bulk-len`, 512 MiB).
const MAX_BULK: usize = 512 << 20;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("hash reader: {what}"))
}

/// A network failure (or a timeout, `what` says which step), as redis-rs
/// reports its own.
fn io_error(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Redis(std::io::Error::new(e.kind(), format!("hash reader: {what}: {e}")).into())
}

fn timed_out(what: &str) -> StoreError {
    io_error(what, std::io::ErrorKind::TimedOut.into())
}

impl HashReader {
    /// Connects to `node`, logs in and selects its database; every network
    /// step (here and in [`HashReader::for_each_field`]) must finish within `timeout`.
    pub(crate) async fn connect(node: &NodeAddr, timeout: Duration) -> Result<Self, StoreError> {
        let what = format!("connecting to {}:{}", node.host, node.port);
        let stream =
            tokio::time::timeout(timeout, TcpStream::connect((node.host.as_str(), node.port)))
                .await
                .map_err(|_| timed_out(&what))?
                .map_err(|e| io_error(&what, e))?;
        let _ = stream.set_nodelay(true);
        let mut reader = Self {
            stream,
            buf: Vec::with_capacity(1 << 20),
            pos: 0,
            anchor: 0,
            timeout,
        };
        let mut setup = redis::pipe();
        if let Some(password) = &node.password {
            match &node.username {
                Some(user) => setup.cmd("AUTH").arg(user).arg(password),
                None => setup.cmd("AUTH").arg(password),
            };
        }
        if node.db != 0 {
            setup.cmd("SELECT").arg(node.db);
        }
        if !setup.is_empty() {
            reader.send(&setup.get_packed_pipeline()).await?;
            for _ in 0..setup.len() {
                reader.simple_reply().await?;
            }
        }
        Ok(reader)
    }

    /// `HGETALL` of each of `keys`, pipelined: calls `field(i, name, value)`
    /// for every field of `keys[i]`, in reply order, borrowing the bytes from
    /// the read buffer (no allocation per field).
    pub(crate) async fn for_each_field(
        &mut self,
        keys: &[String],
        mut field: impl FnMut(usize, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.send(&hgetall_pipeline(keys).get_packed_pipeline())
            .await?;
        for i in 0..keys.len() {
            let n = self.header(b'*').await?;
            if n % 2 != 0 {
                return Err(corrupt("odd HGETALL reply"));
            }
            for _ in 0..n / 2 {
                self.anchor = self.pos;
                // Relative to `anchor`: reading the value may move the buffer.
                let name = self.bulk().await?;
                let name = name.start - self.anchor..name.end - self.anchor;
                let value = self.bulk().await?;
                let name = &self.buf[self.anchor + name.start..self.anchor + name.end];
                field(i, name, &self.buf[value])?;
            }
            self.anchor = self.pos;
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| timed_out("write"))?
            .map_err(|e| io_error("write", e))
    }

    /// Reads more bytes from the node into `buf`, first dropping what is no
    /// longer needed (before `anchor`).
    async fn fill(&mut self) -> Result<(), StoreError> {
        let done = self.anchor.min(self.pos);
        if done > 0 && done * 2 >= self.buf.len() {
            self.buf.drain(..done);
            self.pos -= done;
            self.anchor -= done;
        }
        if self.buf.capacity() - self.buf.len() < (1 << 16) {
            self.buf.reserve(1 << 20);
        }
        let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| timed_out("read"))?
            .map_err(|e| io_error("read", e))?;
        if read == 0 {
            return Err(io_error("read", std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// The next line (without its CRLF), as a range of `buf`.
    async fn line(&mut self) -> Result<std::ops::Range<usize>, StoreError> {
        // Bytes after `pos` already searched (`fill` may move `pos`).
        let mut searched = 0;
        loop {
            let from = self.pos + searched;
            if let Some(at) = self.buf[from..].iter().position(|&b| b == b'\n') {
                let end = from + at;
                if end == self.pos || self.buf[end - 1] != b'\r' {
                    return Err(corrupt("a line without its CRLF"));
                }
                let line = self.pos..end - 1;
                self.pos = end + 1;
                return Ok(line);
            }
            searched = self.buf.len() - self.pos;
            self.fill().await?;
        }
    }

    /// What a reply line that is not the expected kind means.
    fn unexpected(&self, line: std::ops::Range<usize>) -> StoreError {
        let bytes = &self.buf[line];
        match bytes.split_first() {
            Some((b'-', message)) => corrupt(format!(
                "server error: {}",
                String::from_utf8_lossy(message)
            )),
            _ => corrupt(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
            )),
        }
    }

    /// A line's integer after its type byte `kind` (`*3`, `$108`).
    async fn header(&mut self, kind: u8) -> Result<i64, StoreError> {
        let line = self.line().await?;
        match self.buf[line.clone()].split_first() {
            Some((&k, digits)) if k == kind => std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.unexpected(line)),
            _ => Err(self.unexpected(line)),
        }
    }

    /// A status reply (`+OK`).
    async fn simple_reply(&mut self) -> Result<(), StoreError> {
        let line = self.line().await?;
        match self.buf[line.clone()].first() {
            Some(b'+') => Ok(()),
            _ => Err(self.unexpected(line)),
        }
    }

    /// The next bulk string, as a range of `buf` (valid until `anchor` moves).
    async fn bulk(&mut self) -> Result<std::ops::Range<usize>, StoreError> {
        let len = self.header(b'$').await?;
        let len = usize::try_from(len).map_err(|_| corrupt("nil inside a hash"))?;
        if len > MAX_BULK {
            return Err(corrupt(format!("a bulk string of {len} bytes")));
        }
        while self.buf.len() < self.pos + len + 2 {
            self.fill().await?;
        }
        let value = self.pos..self.pos + len;
        if &self.buf[value.end..value.end + 2] != b"\r\n" {
            return Err(corrupt("bulk string without its CRLF"));
        }
        self.pos += len + 2;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    //! The reader against a scripted peer that sends its replies a few bytes at
    //! a time, so every line and bulk string is split across reads. (Real
    //! servers: `tests/store_redis.rs` restores through this reader.)
    use super::*;
    use tokio::net::TcpListener;

    /// A peer that answers one connection with `reply`, `chunk` bytes per write,
    /// and discards whatever it is sent.
    async fn scripted(reply: Vec<u8>, chunk: usize) -> NodeAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            let (mut rx, mut tx) = stream.into_split();
            tokio::spawn(async move {
                let mut sink = [0_u8; 4096];
                while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            for piece in reply.chunks(chunk) {
                if tx.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Keep the connection open until the reader is done with it.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        NodeAddr {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            db: 0,
        }
    }

    fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }

    fn hash(out: &mut Vec<u8>, fields: &[(Vec<u8>, Vec<u8>)]) {
        out.extend_from_slice(format!("*{}\r\n", 2 * fields.len()).as_bytes());
        for (name, value) in fields {
            bulk(out, name);
            bulk(out, value);
        }
    }

    async fn read_all(
        node: &NodeAddr,
        keys: usize,
    ) -> Result<Vec<(usize, Vec<u8>, Vec<u8>)>, StoreError> {
        let mut reader = HashReader::connect(node, Duration::from_secs(5)).await?;
        let keys: Vec<String> = (0..keys).map(|i| format!("k{i}")).collect();
        let mut seen = Vec::new();
        reader
            .for_each_field(&keys, |i, name, value| {
                seen.push((i, name.to_vec(), value.to_vec()));
                Ok(())
            })
            .await?;
        Ok(seen)
    }

    #[tokio::test]
    async fn reads_hashes_split_across_reads() {
        let small = vec![
            (b"7".to_vec(), vec![0xAB; 108]),
            (b"w12".to_vec(), b"\r\n$*-\r\n".to_vec()),
        ];
        let big = vec![(b"big".to_vec(), (0..300_000).map(|i| i as u8).collect())];
        let many: Vec<_> = (0..3000)
            .map(|i| (i.to_string().into_bytes(), vec![i as u8; 108]))
            .collect();
        let mut reply = Vec::new();
        hash(&mut reply, &small);
        hash(&mut reply, &[]);
        hash(&mut reply, &big);
        hash(&mut reply, &many);
        let mut want = Vec::new();
        for (i, fields) in [&small, &Vec::new(), &big, &many].into_iter().enumerate() {
            want.extend(fields.iter().map(|(n, v)| (i, n.clone(), v.clone())));
        }
        for chunk in [3, 1000, 1 << 20] {
            let node = scripted(reply.clone(), chunk).await;
            assert_eq!(
                read_all(&node, 4).await.expect("read"),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn logs_in_and_selects_first() {
        let mut reply = b"+OK\r\n+OK\r\n".to_vec();
        hash(&mut reply, &[(b"1".to_vec(), b"v".to_vec())]);
        let node = NodeAddr {
            username: Some("loader".into()),
            password: Some("secret".into()),
            db: 2,
            ..scripted(reply, 2).await
        };
        let seen = read_all(&node, 1).await.expect("read");
        assert_eq!(seen, vec![(0, b"1".to_vec(), b"v".to_vec())]);

        let refused = NodeAddr {
            password: Some("wrong".into()),
            ..scripted(b"-WRONGPASS invalid password\r\n".to_vec(), 4).await
        };
        let err = read_all(&refused, 1).await.expect_err("refused");
        assert!(err.to_string().contains("WRONGPASS"), "{err}");
    }

    #[tokio::test]
    async fn what_is_not_a_hash_is_an_error() {
        let mut half = Vec::new();
        hash(&mut half, &[(b"1".to_vec(), vec![1; 108])]);
        half.truncate(half.len() - 50);
        for (reply, why) in [
            (b"-MOVED 866 127.0.0.1:7001\r\n".to_vec(), "MOVED"),
            (b"*2\r\n$1\r\n1\r\n$-1\r\n".to_vec(), "nil"),
            (b"*3\r\n".to_vec(), "odd"),
            (b"$3\r\nabc\r\n".to_vec(), "unexpected"),
            (b"*2\r\n$1\r\n1\r\n$2\r\nabcd\r\n".to_vec(), "CRLF"),
            (b"*x\r\n".to_vec(), "unexpected"),
            (b"*2\n".to_vec(), "CRLF"),
            (b"*2\r\n$9999999999\r\n".to_vec(), "bytes"),
        ] {
            let node = scripted(reply, 3).await;
            let err = read_all(&node, 1).await.expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        // A peer that stops mid-reply: the reader waits at most its timeout.
        let node = scripted(half, 7).await;
        let mut reader = HashReader::connect(&node, Duration::from_millis(300))
            .await
            .expect("connect");
        let err = reader
            .for_each_field(&["k".into()], |_, _, _| Ok(()))
            .await
            .expect_err("truncated");
        assert!(
            matches!(&err, StoreError::Redis(e) if e.is_timeout()),
            "{err}"
        );
    }
}
