//! Field parsers for values that are checked as they are read, so a bad value is refused at
//! load time with its key named (`… for key \`engine.chunk_size\``) and the settings hold only
//! valid values.
use std::net::SocketAddr;
use std::num::NonZeroU64;

use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// A count or duration that must be at least 1, as any `NonZero…` type.
pub(crate) fn at_least_one<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<NonZeroU64>,
{
    let n = u64::deserialize(d)?;
    let n = NonZeroU64::new(n).ok_or_else(|| D::Error::custom("must be at least 1"))?;
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
}

/// A `host:port` address to listen on (an IP address, not a name).
pub(crate) fn socket_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| D::Error::custom(format!("is not host:port ({text:?})")))
}

/// A secret as `check-config` shows it: `"(set)"`, or `""` when empty (as `config/default.toml`
/// leaves it), never its value.
pub(crate) fn redacted<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "(set)"
    })
}
