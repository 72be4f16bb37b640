//! modelfleet-router: one OpenAI-compatible address for every ModelDeployment it watches.
//!
//! Layout (docs/router.md): the pure decisions (`table`, `pick`, `limits`, `cache`, `fallback`)
//! are tested from fixtures; the I/O (`discovery`, `scrape`, `proxy`, `report`, `epp`) sits at the
//! edges in small functions.

pub mod epp;
