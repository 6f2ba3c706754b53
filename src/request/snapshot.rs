//! What a request reads from the live config: one [`Snapshot`] per config generation (the
//! config, the app as a pingora peer with its address resolved, the accounts' cool-down
//! breakers), loaded once per request and kept, so a request never mixes two configs.
//! `ops::live` builds the snapshots and swaps them in; the request path reads them through
//! [`Snapshots`], and builds each route's [`Minter`] from the snapshot it holds.

use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::token::cool_down::{CoolDown, CoolDowns};
use crate::token::mint::Minter;
use crate::token::released::ReleasedClient;

/// Everything a request needs from one config generation, built and validated as one unit.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// The app, with its address resolved and TLS and timeouts applied.
    pub upstream: HttpPeer,
    /// The cool-down breaker of each route's account, by route index (shared by the
    /// routes of one account, and kept across reloads).
    cool_downs: Vec<Arc<CoolDown>>,
}

impl Snapshot {
    /// The snapshot of `config` with the app at `upstream`; each route's breaker comes from
    /// `cool_downs`, where the accounts' breakers live on between snapshots.
    pub fn new(config: Config, upstream: HttpPeer, cool_downs: &CoolDowns) -> Self {
        let cool_downs = config
            .routes
            .0
            .iter()
            .map(|route| {
                let account = &route.released;
                cool_downs.get(
                    account.api_url.as_str(),
                    &account.account_id,
                    account.cooldown,
                )
            })
            .collect();
        Self {
            config,
            upstream,
            cool_downs,
        }
    }

    /// The cool-down breaker of route `route` (an index into `config.routes`).
    pub fn cool_down(&self, route: usize) -> &Arc<CoolDown> {
        &self.cool_downs[route]
    }

    /// The minter of route `route` (an index into `config.routes`): its identity rules,
    /// account and breaker, with the token client and metrics shared by every route.
    pub fn minter(&self, route: usize, client: &ReleasedClient, metrics: &Arc<Metrics>) -> Minter {
        let settings = &self.config.routes.0[route];
        Minter {
            identity: Arc::clone(&settings.identity),
            settings: Arc::clone(&settings.released),
            cool_down: Arc::clone(self.cool_down(route)),
            client: client.clone(),
            metrics: Arc::clone(metrics),
        }
    }
}

/// Where the request path gets the snapshot in force (`ops::live::Live` implements it).
pub trait Snapshots: Send + Sync + 'static {
    /// The snapshot in force now. Load it once per request and keep it.
    fn snapshot(&self) -> Arc<Snapshot>;
}
