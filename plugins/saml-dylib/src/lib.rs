//! The SAML plugin (`portcullis-saml`) as a dynamic library: the same code the gateway links
//! in, exported through the plugin ABI. A `[[plugin]]` entry naming this library replaces the
//! built-in `saml` plugin, so only one copy of samael (and of xmlsec's global state) is active.

portcullis_plugin_sdk::export_plugin!(portcullis_saml::Saml::default());
