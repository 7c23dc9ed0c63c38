//! `mxp call`: one call, its response printed.

use std::time::Instant;

use clap::Args;
use mxp::proto::message::{Message, MessageType};
use serde::Serialize;

use super::CliError;
use super::client::ClientArgs;

/// `mxp call` flags.
#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The request payload.
    #[arg(long, value_name = "TEXT")]
    pub data: String,
}

#[derive(Serialize)]
struct Report<'a> {
    carrier: mxp::Carrier,
    fell_back: bool,
    rtt_us: f64,
    response_type: &'static str,
    response: &'a str,
}

/// Makes the call and prints the response payload.
pub(crate) async fn run(args: CallArgs) -> Result<(), CliError> {
    let client = args.client.connect().await?;
    let request =
        Message::new(MessageType::Call, args.data.clone().into_bytes()).with_message_id(1);
    let start = Instant::now();
    let reply = tokio::time::timeout(args.client.timeout, client.conn.call(&request))
        .await
        .map_err(|_| CliError::Failed(format!("no response within {:?}", args.client.timeout)))?
        .map_err(|e| CliError::Failed(format!("call failed: {e}")))?;
    let rtt = start.elapsed();
    let carrier = client.conn.carrier();
    let fell_back = client.fell_back;
    client.close().await;
    let text = String::from_utf8_lossy(&reply.payload);
    if args.client.json {
        let report = Report {
            carrier,
            fell_back,
            rtt_us: rtt.as_secs_f64() * 1e6,
            response_type: reply.kind.as_str(),
            response: &text,
        };
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
    } else {
        println!("{text}");
    }
    Ok(())
}
