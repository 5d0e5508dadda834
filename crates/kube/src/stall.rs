//! Deadlines on the exec streams to helper pods: a stream that makes no progress for `stall`
//! (a kubelet that stopped answering, a frozen helper, a half-open connection) ends with a
//! `TimedOut` error instead of blocking the backup or restore, and the app's lock, for ever.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An [`AsyncRead`] or [`AsyncWrite`] that fails with [`io::ErrorKind::TimedOut`] when the inner
/// one has been pending for `stall` without moving a byte. Every byte moved resets the clock.
pub struct Stalling<T> {
    inner: T,
    stall: Duration,
    /// Made at the first poll (a tokio timer needs the runtime, which `new` may run outside).
    timer: Option<Pin<Box<Sleep>>>,
    what: String,
}

impl<T> Stalling<T> {
    /// `what` names the stream in the error ("read claim ns/data").
    pub fn new(inner: T, stall: Duration, what: impl Into<String>) -> Self {
        Stalling {
            inner,
            stall,
            timer: None,
            what: what.into(),
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn progress(&mut self) {
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(Instant::now() + self.stall);
        }
    }

    /// After the inner stream said `Pending`: an error if the deadline passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let stall = self.stall;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: no progress for {} s: the stream stalled",
                    self.what,
                    self.stall.as_secs()
                ),
            )),
            Poll::Pending => None,
        }
    }
}

impl<T> Stalling<T> {
    /// What the inner stream's poll `r` means with the deadline: progress resets the clock
    /// (`moved`: whether a ready result counts as progress), a wait past it is an error.
    fn guard<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>, moved: bool) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                if moved {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalling<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.guard(cx, r, true)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalling<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.guard(cx, r, true)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, r, true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, r, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_read_that_stalls_times_out_and_one_that_trickles_does_not() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = Stalling::new(rx, Duration::from_secs(120), "read claim ns/data");
        let feeder = tokio::spawn(async move {
            // A byte every 100 s: slow, never stalled.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(100)).await;
                tx.write_all(b"x").await.unwrap();
            }
            // Then silence, with the stream still open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        let err = loop {
            match r.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"xxxxx");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains("read claim ns/data: no progress for 120 s"),
            "{err}"
        );
        feeder.abort();
    }

    /// Regression: made outside the runtime (as the blocking restore code does), it panicked.
    #[test]
    fn it_can_be_made_outside_a_runtime() {
        let (_tx, rx) = tokio::io::duplex(8);
        let r = Stalling::new(rx, Duration::from_secs(1), "read");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let err = rt.block_on(async move {
            let mut r = r;
            let mut b = [0u8; 1];
            r.read(&mut b).await.unwrap_err()
        });
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_times_out() {
        let (tx, _rx) = tokio::io::duplex(16);
        let mut w = Stalling::new(tx, Duration::from_secs(5), "write claim ns/data");
        let err = w.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
