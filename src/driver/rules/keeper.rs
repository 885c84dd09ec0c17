//! The driver's side of the rules: applying them in Join, settling and removing them at
//! stop, and the background keeper that re-applies what the kernel lost.

use super::{held_by_host, Rules};
use crate::dataplane::iptables::{self, EndpointRules, Mode};
use crate::driver::Driver;
use crate::error::{Error, Result};

impl Driver {
    /// The firewall mode in force (`None`: the plugin keeps no rules).
    pub(crate) fn rule_mode(&self) -> Option<Mode> {
        self.rules.mode()
    }

    /// Records (not yet applies) the rules of an endpoint of this host. Its published ports
    /// are refused, in Docker's words, when another endpoint of this host publishes the same
    /// one or a program of the host holds it (a probe bind, as docker-proxy would do).
    pub(crate) async fn rules_add_endpoint(
        &self,
        endpoint_id: &str,
        rules: EndpointRules,
    ) -> Result<()> {
        if self.rule_mode().is_none() {
            return Ok(());
        }
        // Judged against every endpoint of this host: right after a start the running
        // containers' ports are not in the state until the endpoints are loaded.
        if !rules.ports.is_empty() {
            self.rules
                .ensure_known()
                .await
                .map_err(|e| e.context("check published ports"))?;
        }
        let mut state = self.rules.inner.state.lock().await;
        for p in &rules.ports {
            let taken = state
                .endpoints
                .iter()
                .filter(|(id, _)| id.as_str() != endpoint_id)
                .flat_map(|(_, e)| &e.ports)
                .any(|q| {
                    q.protocol == p.protocol
                        && q.host_port == p.host_port
                        && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
                });
            if taken || held_by_host(p) {
                return Err(Error::invalid(format!(
                    "publish port {}/{}: Bind for {}:{} failed: port is already allocated",
                    p.host_port,
                    p.protocol,
                    p.host_ip
                        .map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string()),
                    p.host_port
                )));
            }
        }
        self.rules.record_endpoint(&mut state, endpoint_id, rules);
        Ok(())
    }

    /// Forgets an endpoint's rules and removes them from the host in the background.
    pub(crate) async fn rules_remove_endpoint(&self, endpoint_id: &str) {
        let removed = {
            let mut state = self.rules.inner.state.lock().await;
            self.rules.forget_endpoint(&mut state, endpoint_id)
        };
        if removed {
            self.rules.apply_soon();
        }
    }

    /// Applies the current rule state now.
    pub(crate) async fn rules_apply(&self) -> Result<()> {
        self.rules.apply().await
    }

    /// Applies a queued change now and waits for any apply in progress (an apply holds the
    /// applier's lock while iptables runs): for a clean stop.
    pub async fn settle_rules(&self) {
        if self.rule_mode().is_none() {
            return;
        }
        if self
            .rules
            .inner
            .queued
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            if let Err(e) = self.rules.apply().await {
                tracing::warn!(error = %e, "apply firewall rules before stopping");
            }
        }
        let applier = self.rules.inner.applier.clone();
        let _ = tokio::task::spawn_blocking(move || {
            drop(applier.lock().unwrap_or_else(|p| p.into_inner()));
        })
        .await;
    }

    /// At a graceful stop: removes every rule and chain the plugin owns when this host has
    /// no endpoint left, so a stopped plugin leaves nothing behind; with endpoints (running
    /// containers) the rules stay and keep them working until the plugin is back. Returns
    /// whether the rules were removed. Nothing is removed while the endpoints are unknown
    /// (the start-up rebuild never succeeded) or in `off` mode (the plugin wrote nothing).
    pub async fn remove_rules_if_idle(&self) -> Result<bool> {
        if self.rule_mode().is_none() {
            return Ok(false);
        }
        if !self
            .rules
            .inner
            .known
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // Stopped before the keeper loaded the endpoints (a stop right after start):
            // one bounded try now; without an answer, the rules stay.
            match tokio::time::timeout(std::time::Duration::from_secs(3), self.rules.load()).await {
                Ok(Ok(_)) => {}
                _ => return Ok(false),
            }
        }
        // Held throughout, so no apply can run (and write rules again) meanwhile.
        let state = self.rules.inner.state.lock().await;
        if !state.endpoints.is_empty() {
            return Ok(false);
        }
        // The members keeper writes no ip set from here on (they go with the rules).
        *self.routes_stopped.lock().await = true;
        let applier = self.rules.inner.applier.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut applier = applier.lock().unwrap_or_else(|p| p.into_inner());
            // Stopping: no apply still on its way may write the rules again.
            applier.close();
            iptables::remove_all()
        })
        .await
        .map_err(|e| Error::msg(format!("remove firewall rules: {e}")))??;
        drop(state);
        tracing::debug!(lines = removed, "firewall rules removed");
        Ok(true)
    }

    /// Loads the rule state from the datastore (retried with back-off until it answers) and
    /// applies it, then keeps the rules in place: every `rules_check_interval` (sooner, with
    /// back-off, after a failed apply) it checks them and rewrites what an `iptables -F` or
    /// a firewall reload took away. Returns at once; nothing to do in `off` mode.
    pub fn keep_rules_in_background(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        crate::driver::supervise("firewall-keeper", move || {
            let driver = me.clone();
            async move { driver.keep_rules().await }
        });
    }

    async fn keep_rules(self: std::sync::Arc<Self>) {
        let driver = self;
        {
            driver.rules.resolve_mode().await;
            if driver.rule_mode().is_none() {
                return;
            }
            let mut delay = std::time::Duration::from_millis(500);
            loop {
                match driver.rebuild_rules().await {
                    Ok(n) => {
                        tracing::info!(endpoints = n, "firewall rules rebuilt");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "rebuild firewall rules; the running containers' rules are left as they are");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(10));
                    }
                }
            }
            let interval = driver.settings.rules_check_interval;
            let mut delay = interval;
            let mut backoff: Option<std::time::Duration> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = driver.rules.inner.wake.notified() => {
                        // An apply failed: try again soon, backing off.
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
                match driver.rules.check_and_repair().await {
                    Ok(_) => {
                        backoff = None;
                        delay = interval;
                    }
                    Err(e) => {
                        let next = backoff.map_or(std::time::Duration::from_secs(1), |b| b * 2);
                        delay = next.min(interval);
                        backoff = Some(delay);
                        tracing::warn!(error = %e, retry_in = ?delay, "firewall rules not in place");
                    }
                }
            }
        }
    }

    /// A handle on the rule state for background tasks.
    pub(crate) fn rules(&self) -> Rules {
        self.rules.clone()
    }

    /// Loads the rule state from this host's WorkloadEndpoints (merged with endpoints made
    /// since the start) and applies it: rules of endpoints that no longer exist go, nothing
    /// is duplicated. Fails only when the datastore cannot be listed; the state then stays
    /// unknown and nothing is applied until a load succeeds.
    pub async fn rebuild_rules(&self) -> Result<usize> {
        if self.rule_mode().is_none() {
            return Ok(0);
        }
        let n = self.rules.load().await?;
        // Known now: a failed apply (iptables missing, the xtables lock held) is retried at
        // the next change and by the periodic rewrite.
        if let Err(e) = self.rules_apply().await {
            tracing::warn!(error = %e, "apply firewall rules; retried at the next change");
        }
        Ok(n)
    }
}
