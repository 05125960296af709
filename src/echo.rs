//! A TCP echo backend: writes back every byte it reads, and carries half-close (after the
//! client's EOF it sends what is left, then shuts its own write side). Used by `ringtun echo`,
//! the demo and tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// Largest chunk echoed at once.
const ECHO_BUFFER_BYTES: usize = 64 * 1024;

/// Serves echo on `listener` forever.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = echo_one(stream).await {
                        debug!(%peer, error = %e, "echo connection ended with error");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, "echo accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

async fn echo_one(mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ECHO_BUFFER_BYTES];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            stream.shutdown().await?;
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Binds `addr` and serves echo on a background thread with its own runtime; returns the bound
/// address. The thread lives as long as the process.
pub fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringtun-echo".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => serve(l).await,
                    Err(e) => debug!(error = %e, "echo listener unusable"),
                }
            })
        })?;
    Ok(local)
}
