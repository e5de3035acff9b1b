//! The C ABI between the gateway and a plugin library.
//!
//! A library exports one symbol, [`ENTRY_SYMBOL`], of type [`EntryFn`]: the gateway passes its
//! [`crate::ABI_VERSION`]; the library answers with its own and, only when they are equal,
//! fills in a [`PluginApi`]. From then on every call is bytes in, bytes out:
//! `PluginApi::call(host, bincode(Call)) -> bincode(Result<Outcome, PluginError>)`, and the
//! plugin reaches the gateway through `HostApi::call(ctx, bincode(HostCall)) -> bincode(HostReply)`.
//! Each side frees only the buffers it allocated, through the other side's `free`. Panics are
//! caught on both sides of the boundary: unwinding out of `extern "C"` would abort the process.
//!
//! Plugin authors do not use this module directly: [`crate::export_plugin!`] writes it all.
#![allow(unsafe_code)]

use crate::{
    dispatch, Call, DirectoryError, Host, HostCall, HostReply, NewPerson, Outcome, PeoplePage, Person, PersonPatch,
    Plugin, PluginError,
};
use serde::{de::DeserializeOwned, Serialize};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The name of the one symbol a plugin library exports.
pub const ENTRY_SYMBOL: &[u8] = b"portcullis_plugin_entry";

/// Bytes owned by the side that allocated them.
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// Start of the bytes.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocated capacity (needed to free).
    pub cap: usize,
}

impl Buffer {
    /// Hands a vector over; free it with the allocating side's `free`.
    pub fn from_vec(vec: Vec<u8>) -> Buffer {
        let mut vec = std::mem::ManuallyDrop::new(vec);
        Buffer {
            ptr: vec.as_mut_ptr(),
            len: vec.len(),
            cap: vec.capacity(),
        }
    }

    /// Takes a vector back.
    ///
    /// # Safety
    /// `self` must come from [`Buffer::from_vec`] in this same library (same allocator), once.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        // SAFETY: guaranteed by the caller: the parts come from a Vec of this allocator.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }

    /// Views the bytes.
    ///
    /// # Safety
    /// `ptr` and `len` must describe live memory for the returned lifetime.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The gateway's side, handed to each plugin call.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// Opaque context for `call`.
    pub ctx: *const c_void,
    /// Serves one bincode [`HostCall`], answering a bincode [`HostReply`].
    pub call: unsafe extern "C" fn(ctx: *const c_void, input: *const u8, len: usize) -> Buffer,
    /// Frees a buffer `call` returned.
    pub free: unsafe extern "C" fn(Buffer),
}

/// The plugin's side, filled in by the entry point.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginApi {
    /// Serves one bincode [`Call`], answering a bincode `Result<Outcome, PluginError>`.
    pub call: unsafe extern "C" fn(host: *const HostApi, input: *const u8, len: usize) -> Buffer,
    /// Frees a buffer `call` returned.
    pub free: unsafe extern "C" fn(Buffer),
}

/// The type of [`ENTRY_SYMBOL`]: takes the gateway's ABI version and a place for the
/// plugin's table; returns the library's ABI version, and fills the table only on a match.
pub type EntryFn = unsafe extern "C" fn(host_abi: u32, out: *mut PluginApi) -> u32;

/// Encodes a message (bincode 2, standard config).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default()
}

/// Decodes a message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// The text of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into())
}

// ----- the plugin library's side (used by `export_plugin!`) -----

/// The body of the exported entry point.
///
/// # Safety
/// `out` must be null or point to writable memory for a [`PluginApi`].
pub unsafe fn plugin_entry(
    host_abi: u32,
    out: *mut PluginApi,
    call: unsafe extern "C" fn(*const HostApi, *const u8, usize) -> Buffer,
) -> u32 {
    if host_abi == crate::ABI_VERSION && !out.is_null() {
        // SAFETY: `out` is valid per the caller.
        unsafe {
            out.write(PluginApi {
                call,
                free: free_plugin_buffer,
            })
        };
    }
    crate::ABI_VERSION
}

/// Frees a buffer the plugin library allocated.
///
/// # Safety
/// `buffer` must come from this library's `call`, once.
pub unsafe extern "C" fn free_plugin_buffer(buffer: Buffer) {
    // SAFETY: per the caller, the buffer was made by Buffer::from_vec in this library.
    drop(unsafe { buffer.into_vec() });
}

/// The body of the exported `call`: decode, dispatch with panics caught, encode.
///
/// # Safety
/// `host` must point to a live [`HostApi`] and `input`/`len` to readable bytes, for the call.
pub unsafe fn plugin_call(
    instance: fn() -> &'static dyn Plugin,
    host: *const HostApi,
    input: *const u8,
    len: usize,
) -> Buffer {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the caller, `input` has `len` readable bytes.
        let bytes = if input.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(input, len) }
        };
        let call: Call =
            decode(bytes).map_err(|e| PluginError::Internal(format!("undecodable call (ABI mismatch?): {e}")))?;
        // SAFETY: per the caller, `host` is live for the call.
        let remote = RemoteHost { api: unsafe { &*host } };
        dispatch(instance(), &remote, call)
    }));
    let result: Result<Outcome, PluginError> = match result {
        Ok(result) => result,
        Err(panic) => Err(PluginError::Panicked(panic_message(panic.as_ref()))),
    };
    Buffer::from_vec(encode(&result))
}

/// A [`Host`] reached through the gateway's [`HostApi`].
struct RemoteHost<'a> {
    api: &'a HostApi,
}

impl RemoteHost<'_> {
    fn call(&self, call: HostCall) -> HostReply {
        let input = encode(&call);
        // SAFETY: the gateway's table is live for the duration of the plugin call; the answer
        // is read and then handed back to the gateway's own `free`.
        unsafe {
            let answer = (self.api.call)(self.api.ctx, input.as_ptr(), input.len());
            let reply = decode(answer.as_slice()).unwrap_or_else(HostReply::Refused);
            (self.api.free)(answer);
            reply
        }
    }
}

impl Host for RemoteHost<'_> {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        match self.call(HostCall::KvGet { key: key.into() }) {
            HostReply::Bytes(bytes) => bytes,
            _ => None,
        }
    }
    fn kv_put(&self, key: &str, value: &[u8], ttl_secs: Option<u64>) {
        self.call(HostCall::KvPut {
            key: key.into(),
            value: value.to_vec(),
            ttl_secs,
        });
    }
    fn kv_take(&self, key: &str) -> Option<Vec<u8>> {
        match self.call(HostCall::KvTake { key: key.into() }) {
            HostReply::Bytes(bytes) => bytes,
            _ => None,
        }
    }
    fn kv_delete(&self, key: &str) {
        self.call(HostCall::KvDelete { key: key.into() });
    }
    fn kv_get_or_insert(&self, key: &str, value: &[u8]) -> Option<Vec<u8>> {
        match self.call(HostCall::KvGetOrInsert {
            key: key.into(),
            value: value.to_vec(),
        }) {
            HostReply::Bytes(bytes) => bytes,
            _ => None,
        }
    }
    fn kv_incr(&self, key: &str, ttl_secs: Option<u64>) -> u64 {
        match self.call(HostCall::KvIncr {
            key: key.into(),
            ttl_secs,
        }) {
            HostReply::Count(n) => n,
            // Fail closed: a counter that cannot be read counts as exhausted.
            _ => u64::MAX,
        }
    }
    fn person(&self, id: &str) -> Result<Option<Person>, DirectoryError> {
        found(self.call(HostCall::Person { id: id.into() }))
    }
    fn person_by_email(&self, email: &str) -> Result<Option<Person>, DirectoryError> {
        found(self.call(HostCall::PersonByEmail { email: email.into() }))
    }
    fn person_by_external_id(&self, external_id: &str) -> Result<Option<Person>, DirectoryError> {
        found(self.call(HostCall::PersonByExternalId {
            external_id: external_id.into(),
        }))
    }
    fn people(&self, after_id: Option<&str>, limit: usize) -> Result<PeoplePage, DirectoryError> {
        match self.call(HostCall::People {
            after_id: after_id.map(str::to_string),
            limit,
        }) {
            HostReply::People(result) => result,
            other => Err(unexpected(other)),
        }
    }
    fn create_person(&self, person: NewPerson) -> Result<Person, DirectoryError> {
        written(self.call(HostCall::CreatePerson(person)))
    }
    fn update_person(&self, id: &str, patch: PersonPatch) -> Result<Person, DirectoryError> {
        written(self.call(HostCall::UpdatePerson { id: id.into(), patch }))
    }
    fn delete_person(&self, id: &str) -> Result<Option<Person>, DirectoryError> {
        found(self.call(HostCall::DeletePerson { id: id.into() }))
    }
    fn http(&self, request: crate::OutboundRequest) -> Result<crate::HttpResponse, String> {
        match self.call(HostCall::Http(request)) {
            HostReply::Http(result) => result,
            other => Err(format!("unexpected host reply {other:?}")),
        }
    }
    fn now_unix(&self) -> i64 {
        match self.call(HostCall::Now) {
            HostReply::Now(now) => now,
            _ => 0,
        }
    }
    #[allow(clippy::panic)] // caught by `plugin_call`: the call fails rather than continue without randomness
    fn random(&self, len: usize) -> Vec<u8> {
        match self.call(HostCall::Random { len }) {
            HostReply::Bytes(Some(bytes)) if bytes.len() == len => bytes,
            // Never hand out predictable bytes: a plugin must not continue without randomness.
            _ => panic!("the gateway did not provide randomness"),
        }
    }
    fn log(&self, level: crate::LogLevel, message: &str) {
        self.call(HostCall::Log {
            level,
            message: message.into(),
        });
    }
}

/// A directory lookup's (or deletion's) answer.
fn found(reply: HostReply) -> Result<Option<Person>, DirectoryError> {
    match reply {
        HostReply::PersonFound(result) => result,
        other => Err(unexpected(other)),
    }
}

/// A directory write's answer.
fn written(reply: HostReply) -> Result<Person, DirectoryError> {
    match reply {
        HostReply::PersonWritten(result) => result,
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: HostReply) -> DirectoryError {
    DirectoryError::Unavailable(format!("unexpected host reply {reply:?}"))
}

/// Exports a plugin from a `cdylib`: `export_plugin!(MyPlugin::new());`.
///
/// The expression is evaluated once, on the first call, with panics caught.
#[macro_export]
macro_rules! export_plugin {
    ($constructor:expr) => {
        static PORTCULLIS_PLUGIN_INSTANCE: ::std::sync::OnceLock<::std::boxed::Box<dyn $crate::Plugin>> =
            ::std::sync::OnceLock::new();

        fn portcullis_plugin_instance() -> &'static dyn $crate::Plugin {
            PORTCULLIS_PLUGIN_INSTANCE
                .get_or_init(|| ::std::boxed::Box::new($constructor))
                .as_ref()
        }

        unsafe extern "C" fn portcullis_plugin_call(
            host: *const $crate::abi::HostApi,
            input: *const u8,
            len: usize,
        ) -> $crate::abi::Buffer {
            // SAFETY: the gateway passes a live host table and input buffer for the call.
            unsafe { $crate::abi::plugin_call(portcullis_plugin_instance, host, input, len) }
        }

        /// The plugin's one exported entry point (see `portcullis_plugin_sdk::abi`).
        ///
        /// # Safety
        /// `out` must be null or writable.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn portcullis_plugin_entry(host_abi: u32, out: *mut $crate::abi::PluginApi) -> u32 {
            // SAFETY: forwarded from the gateway's call.
            unsafe { $crate::abi::plugin_entry(host_abi, out, portcullis_plugin_call) }
        }
    };
}
