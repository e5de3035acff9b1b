//! Test fixture: a library exporting the plugin entry point of a future ABI (version 999).
//! It never fills in the function table, as a real library of another version would not.

/// The entry point, answering ABI version 999 whatever the gateway speaks.
///
/// # Safety
/// Never writes through `_out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn portcullis_plugin_entry(_host_abi: u32, _out: *mut u8) -> u32 {
    999
}
