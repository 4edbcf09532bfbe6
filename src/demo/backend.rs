//! TEMPORARY stub, replaced by the demo chat backend.
pub async fn serve(listener: tokio::net::TcpListener, _name: String) {
    while listener.accept().await.is_ok() {}
}
