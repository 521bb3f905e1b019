//! Benchmark fixture: a faithful copy of the broadcast-chat exercise's server,
//! the design wschat grew from, kept only to measure wschat against it.
//!
//! One task per connection, a `broadcast::channel(16)` shared by all, every
//! message re-wrapped per recipient and written with `send` (write + flush);
//! a receiver that lags ends its connection, as in the exercise.
//!
//!     cargo run --release --example exercise_server -- 127.0.0.1:2001

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, Sender};
use tokio_websockets::{Message, ServerBuilder, WebSocketStream};

async fn handle_connection(
    addr: SocketAddr,
    mut ws_stream: WebSocketStream<TcpStream>,
    bcast_tx: Sender<String>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ws_stream
        .send(Message::text("Welcome to chat! Type a message".to_string()))
        .await?;
    let mut bcast_rx = bcast_tx.subscribe();
    loop {
        tokio::select! {
            incoming = ws_stream.next() => match incoming {
                Some(Ok(msg)) => {
                    if let Some(text) = msg.as_text() {
                        bcast_tx.send(format!("{addr}: {text}"))?;
                    }
                }
                Some(Err(err)) => return Err(err.into()),
                None => return Ok(()),
            },
            msg = bcast_rx.recv() => {
                let msg = msg?;
                if !msg.starts_with(&format!("{addr}:")) {
                    ws_stream.send(Message::text(msg)).await?;
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2001".into());
    let (bcast_tx, _) = broadcast::channel(16);
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on ws://{}", listener.local_addr()?);
    loop {
        let (socket, addr) = listener.accept().await?;
        let bcast_tx = bcast_tx.clone();
        tokio::spawn(async move {
            if let Ok((_req, ws_stream)) = ServerBuilder::new().accept(socket).await {
                let _ = handle_connection(addr, ws_stream, bcast_tx).await;
            }
        });
    }
}
