//! `bench echo`: a plain TCP echo backend for the other modes (and for `perf/compare`), so every
//! system under test gets the same backend. Each connection's bytes are written back as they
//! arrive; the client's EOF is passed on as a write shutdown. It has no idle timeout (idle sessions
//! must be held) and does not inspect the bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{BenchError, CommonArgs, EchoArgs, Outcome};

pub(crate) async fn run(common: &CommonArgs, args: &EchoArgs) -> Result<Outcome, BenchError> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|source| BenchError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| BenchError::Io {
        what: "reading the listening address",
        source,
    })?;
    if common.json {
        println!("{}", serde_json::json!({ "listening": local.to_string() }));
    } else {
        println!("listening on {local}");
    }
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(echo(sock));
                }
                Err(e) => {
                    eprintln!("echo: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    match common.duration_secs {
        Some(d) => {
            let _ = tokio::time::timeout(Duration::from_secs_f64(d), accept_loop).await;
        }
        None => accept_loop.await,
    }
    Ok(Outcome {
        json: serde_json::json!({ "mode": "echo", "listen": local.to_string() }),
        table: format!("echo {local}: stopped\n"),
        failures: Vec::new(),
    })
}

async fn echo(mut sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) => {
                let _ = sock.shutdown().await;
                return;
            }
            Ok(n) => {
                if sock.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
