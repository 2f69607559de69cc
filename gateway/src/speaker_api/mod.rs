//! The SePay Speaker API: what the shop's SoundBox is told to say.
//!
//! - [`client`]: the typed client (token lifecycle, envelope, 401 and 429).
//! - [`sim`]: a faithful simulator, in process or standalone.
//! - [`words`]: amounts as the speaker says them.

pub mod client;
pub mod sim;
pub mod types;
pub mod words;
