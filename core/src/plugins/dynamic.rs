//! Plugin libraries: checked (optional SHA-256 pin), loaded with libloading, handshaken on the
//! ABI version, then called with bincode bytes. This file and the SDK's `abi` module are the
//! only `unsafe` code of the gateway.
#![allow(unsafe_code)]

use portcullis_plugin_sdk::abi::{decode, encode, panic_message, Buffer, EntryFn, HostApi, PluginApi, ENTRY_SYMBOL};
use portcullis_plugin_sdk::{serve_host_call, Call, Host, HostCall, HostReply, Outcome, PluginError, ABI_VERSION};
use sha2::{Digest, Sha256};
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A loaded plugin library's function table. The library is never unloaded.
pub struct DynamicPlugin {
    api: PluginApi,
}

/// Why a plugin library was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("cannot read {}: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{} has SHA-256 {digest}, but the config pins {pin}; refusing to load it", .path.display())]
    PinMismatch { path: PathBuf, digest: String, pin: String },
    #[error("cannot load {}: {error}", .path.display())]
    Load { path: PathBuf, error: libloading::Error },
    #[error("{} is not a Portcullis plugin (no `portcullis_plugin_entry`): {error}", .path.display())]
    NoEntryPoint { path: PathBuf, error: libloading::Error },
    #[error("{}: the entry point panicked", .path.display())]
    EntryPointPanicked { path: PathBuf },
    #[error(
        "{} was built for plugin ABI version {their_abi}, but this Portcullis speaks ABI version {}: rebuild it against the matching portcullis-plugin-sdk",
        .path.display(),
        ABI_VERSION
    )]
    AbiMismatch { path: PathBuf, their_abi: u32 },
}

/// The SHA-256 of a file, in lower-case hex.
pub fn file_sha256(path: &Path) -> Result<String, LibraryError> {
    let bytes = std::fs::read(path).map_err(|error| LibraryError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

impl DynamicPlugin {
    /// Loads the library at `path`, after checking its SHA-256 against `pin` when given.
    pub fn load(path: &Path, pin: Option<&str>) -> Result<(DynamicPlugin, String), LibraryError> {
        let digest = file_sha256(path)?;
        if let Some(expected) = pin {
            if !expected.eq_ignore_ascii_case(&digest) {
                return Err(LibraryError::PinMismatch {
                    path: path.to_path_buf(),
                    digest,
                    pin: expected.to_string(),
                });
            }
        }
        // SAFETY: loading a library runs its initialisers. Plugins are trusted in-process code
        // (the operator named this file in the config, optionally pinned by hash).
        let library = unsafe { libloading::Library::new(path) }.map_err(|error| LibraryError::Load {
            path: path.to_path_buf(),
            error,
        })?;
        // SAFETY: the symbol's type is fixed by the SDK's ABI; its version is checked below
        // before any other use.
        let entry: libloading::Symbol<EntryFn> =
            unsafe { library.get(ENTRY_SYMBOL) }.map_err(|error| LibraryError::NoEntryPoint {
                path: path.to_path_buf(),
                error,
            })?;
        let mut api = MaybeUninit::<PluginApi>::uninit();
        // SAFETY: `api` is writable; the entry point fills it only when the versions match.
        let their_abi =
            catch_unwind(AssertUnwindSafe(|| unsafe { entry(ABI_VERSION, api.as_mut_ptr()) })).map_err(|_| {
                LibraryError::EntryPointPanicked {
                    path: path.to_path_buf(),
                }
            })?;
        if their_abi != ABI_VERSION {
            return Err(LibraryError::AbiMismatch {
                path: path.to_path_buf(),
                their_abi,
            });
        }
        // SAFETY: the versions match, so the entry point has written the table.
        let api = unsafe { api.assume_init() };
        // No unloading: the table's functions must stay valid for the life of the process.
        std::mem::forget(library);
        Ok((DynamicPlugin { api }, digest))
    }

    /// Makes one call across the boundary.
    pub fn call(&self, host: &dyn Host, call: &Call) -> Result<Outcome, PluginError> {
        let input = encode(call);
        let host_ref: &dyn Host = host;
        let table = HostApi {
            ctx: &host_ref as *const &dyn Host as *const c_void,
            call: host_call,
            free: free_host_buffer,
        };
        // SAFETY: `table` and `input` outlive the call; the answer is freed by the plugin's own
        // `free` after it has been decoded.
        unsafe {
            let answer = (self.api.call)(&table, input.as_ptr(), input.len());
            let result = decode::<Result<Outcome, PluginError>>(answer.as_slice());
            (self.api.free)(answer);
            result.unwrap_or_else(|e| {
                Err(PluginError::Internal(format!(
                    "undecodable answer from the plugin: {e}"
                )))
            })
        }
    }
}

/// Serves a plugin's [`HostCall`] against the `&dyn Host` that `ctx` points to.
unsafe extern "C" fn host_call(ctx: *const c_void, input: *const u8, len: usize) -> Buffer {
    let reply = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `&&dyn Host` set up by `DynamicPlugin::call`, live for the call.
        let host: &dyn Host = unsafe { *(ctx as *const &dyn Host) };
        // SAFETY: the plugin passes `len` readable bytes.
        let bytes = if input.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(input, len) }
        };
        match decode::<HostCall>(bytes) {
            Ok(call) => serve_host_call(host, call),
            Err(e) => HostReply::Refused(format!("undecodable host call: {e}")),
        }
    }))
    .unwrap_or_else(|panic| {
        HostReply::Refused(format!(
            "the gateway failed serving the call: {}",
            panic_message(panic.as_ref())
        ))
    });
    Buffer::from_vec(encode(&reply))
}

unsafe extern "C" fn free_host_buffer(buffer: Buffer) {
    // SAFETY: the buffer was made by Buffer::from_vec in `host_call`, in this binary.
    drop(unsafe { buffer.into_vec() });
}
