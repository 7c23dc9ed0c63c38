//! A minimal MXP node: answers every call with the request's payload.
//!
//! ```sh
//! cargo run --example server            # prints its address and key
//! cargo run --example client -- ADDR KEY
//! ```

use mxp::Endpoint;
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{EndpointConfig, Keypair};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A real node loads its key from a file (see `mxp keygen`), so clients
    // can pin it; a fresh one is fine for trying things out.
    let node = Endpoint::bind(
        "127.0.0.1:9000".parse()?,
        EndpointConfig::server(Keypair::generate()),
    )?;
    println!("listening on {}", node.local_addr());
    println!("public key {}", node.public_key());

    while let Some(conn) = node.accept().await {
        tokio::spawn(async move {
            // Every call arrives on its own bidirectional stream.
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    while let Ok(Some(request)) = recv.read_message().await {
                        let response = Message::new(MessageType::Response, request.payload.clone())
                            .with_message_id(request.message_id)
                            .with_trace_id(request.trace_id);
                        if send.write_message(&response).await.is_err() {
                            break;
                        }
                    }
                    let _ = send.finish();
                });
            }
        });
    }
    Ok(())
}
