#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| soundbox_gateway::fuzz::sepay_webhook(data));
