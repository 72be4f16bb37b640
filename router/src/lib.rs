//! modelfleet-router: one OpenAI-compatible address for every ModelDeployment it watches.
//!
//! Layout (docs/router.md): the decisions ([`table`], [`from_kube`], [`pick`], [`limits`],
//! [`keys`], [`cache`]) are pure and tested from fixtures; the I/O (`discovery`, `scrape`,
//! `proxy`, `report`, [`epp`]) sits at the edges in small functions.

pub mod cache;
pub mod epp;
pub mod from_kube;
pub mod keys;
pub mod limits;
pub mod load;
pub mod pick;
pub mod table;
