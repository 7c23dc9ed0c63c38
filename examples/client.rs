//! A minimal MXP client: one call, one event, one datagram.
//!
//! ```sh
//! cargo run --example client -- 127.0.0.1:9000 <node public key>
//! ```

use bytes::Bytes;
use mxp::Endpoint;
use mxp::proto::message::{Message, MessageType};
use mxp::proto::{Band, EndpointConfig, Keypair, PublicKey};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: client ADDR NODE_PUBLIC_KEY");
        std::process::exit(2);
    };
    let server_key: PublicKey = key.parse()?;

    let client = Endpoint::bind(
        "0.0.0.0:0".parse()?,
        EndpointConfig::client(Keypair::generate()),
    )?;
    let conn = client.connect(&format!("mxp://{addr}"), server_key).await?;

    // A call: request and response, in the Critical band.
    let request = Message::new(MessageType::Call, "what is the weather?").with_message_id(1);
    let response = conn.call(&request).await?;
    println!("response: {}", String::from_utf8_lossy(&response.payload));

    // An event: one-way and reliable, in the Background band.
    conn.send_message(&Message::new(MessageType::Event, "task finished"))
        .await?;

    // A heartbeat: unreliable, never retransmitted.
    let heartbeat = Message::new(MessageType::AgentHeartbeat, Bytes::new()).to_bytes()?;
    conn.send_datagram(heartbeat, Band::Control)?;

    conn.close(0, b"bye");
    client.wait_idle().await;
    Ok(())
}
