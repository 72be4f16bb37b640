//! modelfleet-router: one OpenAI-compatible address for every ModelDeployment it watches.
//!
//! Layout (docs/router.md): the decisions ([`table`], [`from_kube`], [`route`], [`pick`],
//! [`limits`], [`keys`], [`cache`]) are pure and tested from fixtures; the I/O ([`discovery`],
//! [`scrape`], [`proxy`], [`serve`], [`epp`], [`activity`], [`report`]) sits at the edges in small functions.

pub mod activity;
pub mod cache;
pub mod config;
pub mod discovery;
pub mod epp;
pub mod from_kube;
pub mod keys;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod pick;
pub mod proxy;
pub mod report;
pub mod route;
pub mod scrape;
pub mod serve;
pub mod state;
pub mod static_config;
pub mod table;
