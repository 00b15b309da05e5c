//! Keeps the Rust client example of docs/clients.md compiling against the async-nats version
//! the project tests with. Building this file is the check; nothing runs (it would need a
//! server and a token file).

#[allow(dead_code)]
async fn connect_like_the_docs() -> Result<async_nats::Client, Box<dyn std::error::Error>> {
    let token_file = "/var/run/secrets/nats/token";
    let client = async_nats::ConnectOptions::with_auth_callback(move |_nonce| async move {
        let token = tokio::fs::read_to_string(token_file)
            .await
            .map_err(|e| async_nats::AuthError::new(format!("reading token file: {}", e.kind())))?;
        let mut auth = async_nats::Auth::new();
        auth.token = Some(token.trim().to_string());
        Ok(auth)
    })
    .custom_inbox_prefix("_INBOX_shop_orders")
    .connection_timeout(std::time::Duration::from_secs(5))
    .connect(std::env::var("NATS_URL")?)
    .await?;
    Ok(client)
}
