//! Loopback ports for the processes a test starts.

/// A loopback port free right now, picked below Linux's ephemeral range
/// (32768 and up) rather than by binding port 0, which hands out a port in
/// that range: a gateway restarted on the same ports must not find one
/// taken by another test's outgoing connection, which the OS numbers from
/// that range. Two tests picking the same port at once is rarer still.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// Serves `app` on a loopback port the OS picks (a server of the test
/// itself, never restarted), on a thread and runtime of its own, for as
/// long as the test runs; its address.
pub fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a test server");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    addr
}
