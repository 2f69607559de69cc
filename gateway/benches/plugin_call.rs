//! One `handle` call of the SePay plugin on a ~500-byte body, through the
//! runtime with a fresh instance per call, against the same parsing compiled
//! natively. Run: `cargo bench -p soundbox-gateway --bench plugin_call`
//! (needs `make plugins`).

mod common;

use common::{micros, plugin_call_samples, sepay_body, stats};

const WASM_CALLS: usize = 5_000;
const NATIVE_CALLS: usize = 50_000;

fn main() {
    let body = sepay_body(500);
    let (wasm_samples, native_samples) = plugin_call_samples(&body, WASM_CALLS, NATIVE_CALLS);

    let w = stats(wasm_samples);
    let n = stats(native_samples);
    println!("plugin_call: SePay webhook handle(), 500-byte body, api-key auth");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p99 µs", "mean µs"
    );
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>10.1}",
        "wasm, fresh instance per call",
        micros(w.p50),
        micros(w.p99),
        micros(w.mean)
    );
    println!(
        "{:<34} {:>10.2} {:>10.2} {:>10.2}",
        "native (same crate, same parsing)",
        micros(n.p50),
        micros(n.p99),
        micros(n.mean)
    );
    println!(
        "ratio wasm/native: p50 {:.1}x, p99 {:.1}x, mean {:.1}x",
        micros(w.p50) / micros(n.p50),
        micros(w.p99) / micros(n.p99),
        micros(w.mean) / micros(n.mean)
    );
}
