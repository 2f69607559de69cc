//! A small persistent key-value store private to the connector (poll cursors).
//! The gateway keeps it on disk; natively it lives in the [`crate::testing::TestHost`].

/// The value stored under `key`.
pub fn get(key: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::kv::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| env.kv.get(key).cloned());
}

/// Stores `value` under `key`.
pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::kv::set(key, value);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| {
        env.kv.insert(key.to_string(), value.to_vec());
        Ok(())
    });
}

/// Removes `key`.
pub fn delete(key: &str) -> Result<(), String> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::kv::delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| {
        env.kv.remove(key);
        Ok(())
    });
}

/// Sets `key` to `new` only if it currently holds `expected` (`None`: absent).
/// Returns whether the swap happened.
pub fn compare_and_swap(key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, String> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::kv::compare_and_swap(key, expected, new);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| {
        if env.kv.get(key).map(Vec::as_slice) == expected {
            env.kv.insert(key.to_string(), new.to_vec());
            Ok(true)
        } else {
            Ok(false)
        }
    });
}

/// Reads a UTF-8 string value.
pub fn get_string(key: &str) -> Option<String> {
    get(key).and_then(|v| String::from_utf8(v).ok())
}
