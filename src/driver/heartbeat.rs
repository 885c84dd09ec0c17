//! The plugin's heartbeat on this host's Node: the annotation [`HEARTBEAT_ANNOTATION`], an
//! RFC 3339 UTC time renewed every heartbeat interval (`CALICO_LIBNETWORK_HEARTBEAT_INTERVAL`,
//! [`DEFAULT_HEARTBEAT_INTERVAL`] by default, written beside it as
//! [`HEARTBEAT_INTERVAL_ANNOTATION`]) by the node-address loop
//! ([`Driver::keep_node_address_in_background`]). A Node whose heartbeat is younger than
//! [`fresh_for`] its interval (three renewals) is [`Liveness::Alive`] (its plugin is likely
//! running), one with an older heartbeat [`Liveness::Dead`]: `calico-libnetwork status
//! --all-hosts` shows it,
//! `node remove` refuses a live Node and `ipam check --repair --node` repairs only a dead one,
//! all by [`liveness`] and [`alive_refusal`]. An annotation is metadata: Calico's shape of the Node is untouched, and the
//! write is a compare-and-swap of the Node as read, keeping every other field.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::Driver;
use crate::datastore::resources;
use crate::error::{Error, Result};
use crate::model::keys;
use crate::model::resources::NodeSpec;
use crate::model::Node;

/// The annotation on a Node with the last time its plugin said it was running.
pub const HEARTBEAT_ANNOTATION: &str = "calico-libnetwork/heartbeat";

/// The annotation on a Node with how often its plugin renews the heartbeat, in seconds
/// (`30`, `1.5`): the one that judges the heartbeat uses the writer's interval, not its own,
/// so a fleet whose hosts run different intervals is judged right from any host.
pub const HEARTBEAT_INTERVAL_ANNOTATION: &str = "calico-libnetwork/heartbeat-interval";

/// How often the plugin renews its heartbeat unless `CALICO_LIBNETWORK_HEARTBEAT_INTERVAL`
/// says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// The shortest heartbeat interval the settings accept.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a heartbeat renewed every `interval` stays fresh: three renewals. A heartbeat
/// younger than this says the Node's plugin is running.
pub fn fresh_for(interval: Duration) -> Duration {
    interval.saturating_mul(3)
}

/// A duration in seconds as the messages show it: `90`, `4.5`.
pub fn seconds_text(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

/// The heartbeat of `node`, if it has one that parses.
pub fn heartbeat_of(node: &Node) -> Option<DateTime<Utc>> {
    let raw = node.metadata.annotations.get(HEARTBEAT_ANNOTATION)?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The heartbeat's text for `at` (`2025-06-01T12:00:00Z`).
pub fn heartbeat_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The interval `node`'s plugin said it renews its heartbeat at
/// ([`HEARTBEAT_INTERVAL_ANNOTATION`]), or `default` when it said none that reads (a plugin
/// from before the annotation) or one below [`MIN_HEARTBEAT_INTERVAL`].
pub fn interval_of(node: &Node, default: Duration) -> Duration {
    node.metadata
        .annotations
        .get(HEARTBEAT_INTERVAL_ANNOTATION)
        .and_then(|t| t.trim().parse::<f64>().ok())
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| *d >= MIN_HEARTBEAT_INTERVAL)
        .unwrap_or(default)
}

/// What a Node's heartbeat says of its plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Liveness {
    /// Renewed within [`fresh_for`] the interval (or stamped in the future, by a clock ahead of
    /// ours): its plugin is likely running.
    #[serde(rename = "alive")]
    Alive,
    /// Older than [`fresh_for`] the interval: its plugin stopped renewing it.
    #[serde(rename = "dead")]
    Dead,
    /// None that parses: a Node of calico-node, or of a plugin from before heartbeats;
    /// nothing says whether it runs.
    #[serde(rename = "no heartbeat")]
    NoHeartbeat,
}

impl Liveness {
    /// `alive`, `dead` or `no heartbeat`, as `status --all-hosts` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::NoHeartbeat => "no heartbeat",
        }
    }
}

/// What `node`'s heartbeat, renewed every `interval` by a running plugin (unless the Node
/// says its own: [`interval_of`]), says of its plugin at `now`: the one place that decides.
pub fn liveness(node: &Node, now: DateTime<Utc>, interval: Duration) -> Liveness {
    let fresh = fresh_for(interval_of(node, interval));
    match heartbeat_of(node) {
        None => Liveness::NoHeartbeat,
        Some(t) if t > now || (now - t).to_std().is_ok_and(|age| age < fresh) => Liveness::Alive,
        Some(_) => Liveness::Dead,
    }
}

/// The refusal of an action on `node` while it is [`Liveness::Alive`] (renewed every
/// `interval` unless the Node says its own): its heartbeat's age and time, and what to do
/// (`or` ends the sentence: `, or use --force`).
pub fn alive_refusal(node: &Node, now: DateTime<Utc>, interval: Duration, or: &str) -> Error {
    let interval = interval_of(node, interval);
    let at = heartbeat_of(node).unwrap_or(now);
    Error::invalid(format!(
        "its plugin is likely running: heartbeat {HEARTBEAT_ANNOTATION} renewed {} s ago \
         (at {}, younger than {} s); stop the plugin on that host and wait{or}",
        (now - at).num_seconds().max(0),
        heartbeat_text(at),
        seconds_text(fresh_for(interval))
    ))
}

impl Driver {
    /// Writes the current time as this host's heartbeat on its Node. Returns whether it
    /// wrote: not when the Node does not exist (it is never created here: a removed Node
    /// stays removed until the plugin starts again), nor when another machine runs under
    /// this node name (the Node is that machine's).
    pub async fn renew_heartbeat(&self) -> Result<bool> {
        let host = &self.settings.nodename;
        if self.foreign_owner.lock().unwrap().is_some() {
            return Ok(false);
        }
        // A datastore migration lock (datastoreReady false) holds every write.
        self.check_ready().await?;
        // Milliseconds (still RFC 3339): with a 1-second interval, a time cut to the second
        // would make a live plugin look up to a second older than it is.
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let every = seconds_text(self.settings.heartbeat_interval);
        resources::update_with::<NodeSpec, _>(self.store.as_ref(), &keys::node_key(host), |n| {
            let notes = &mut n.metadata.annotations;
            notes.insert(HEARTBEAT_ANNOTATION.to_string(), now.clone());
            notes.insert(HEARTBEAT_INTERVAL_ANNOTATION.to_string(), every.clone());
            true
        })
        .await
        .map_err(|e| e.context(format!("renew the heartbeat on Node {host}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Node `name` with `spec` and, when given, the heartbeat `text`.
    pub(crate) fn node(name: &str, text: Option<&str>, spec: NodeSpec) -> Node {
        let mut n = Node::new(name, spec);
        if let Some(t) = text {
            n.metadata
                .annotations
                .insert(HEARTBEAT_ANNOTATION.into(), t.into());
        }
        n
    }

    #[test]
    fn a_heartbeat_is_alive_for_three_intervals() {
        let now: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
        let every = DEFAULT_HEARTBEAT_INTERVAL;
        let of = |t: Option<&str>| liveness(&node("gone", t, NodeSpec::default()), now, every);
        assert_eq!(of(Some("2025-06-01T11:58:31Z")), Liveness::Alive, "89 s");
        assert_eq!(of(Some("2025-06-01T11:58:30Z")), Liveness::Dead, "90 s");
        assert_eq!(of(Some("2025-06-01T12:05:00Z")), Liveness::Alive, "future");
        assert_eq!(of(None), Liveness::NoHeartbeat);
        assert_eq!(of(Some("yesterday")), Liveness::NoHeartbeat, "no parse");
    }

    #[test]
    fn the_interval_given_sets_the_threshold() {
        let now: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
        let n = node("gone", Some("2025-06-01T11:59:57Z"), NodeSpec::default());
        let secs = Duration::from_secs;
        assert_eq!(
            liveness(&n, now, secs(1)),
            Liveness::Dead,
            "3 s, 1 s renewals"
        );
        assert_eq!(
            liveness(&n, now, secs(2)),
            Liveness::Alive,
            "3 s, 2 s renewals"
        );
        assert_eq!(
            fresh_for(Duration::from_millis(1500)),
            Duration::from_millis(4500)
        );
        assert!(alive_refusal(&n, now, Duration::from_millis(1500), "")
            .to_string()
            .contains("younger than 4.5 s"));
    }

    #[test]
    fn the_nodes_own_interval_judges_its_heartbeat() {
        let now: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
        // 10 s old: dead for a plugin renewing every second, alive for one every 30 s.
        let mut n = node("h", Some("2025-06-01T11:59:50Z"), NodeSpec::default());
        let secs = Duration::from_secs;
        assert_eq!(liveness(&n, now, secs(1)), Liveness::Dead, "no annotation");
        let mut says = |v: &str| {
            n.metadata
                .annotations
                .insert(HEARTBEAT_INTERVAL_ANNOTATION.into(), v.into());
            (liveness(&n, now, secs(1)), interval_of(&n, secs(7)))
        };
        assert_eq!(says("30"), (Liveness::Alive, secs(30)));
        assert_eq!(says("3.5"), (Liveness::Alive, Duration::from_millis(3500)));
        assert_eq!(says("3"), (Liveness::Dead, secs(3)));
        // What does not read, or is below the minimum, leaves the caller's interval.
        assert_eq!(says("soon"), (Liveness::Dead, secs(7)));
        assert_eq!(says("0.1"), (Liveness::Dead, secs(7)));
        assert_eq!(says("-5"), (Liveness::Dead, secs(7)));
        assert_eq!(says("1e300"), (Liveness::Dead, secs(7)));
        n.metadata
            .annotations
            .insert(HEARTBEAT_INTERVAL_ANNOTATION.into(), "30".into());
        assert!(alive_refusal(&n, now, secs(1), "")
            .to_string()
            .contains("younger than 90 s"));
    }

    #[test]
    fn the_refusal_says_how_old_the_heartbeat_is_and_what_to_do() {
        let now: DateTime<Utc> = "2025-06-01T12:00:00Z".parse().unwrap();
        let n = node("gone", Some("2025-06-01T11:59:48Z"), NodeSpec::default());
        assert_eq!(
            alive_refusal(&n, now, DEFAULT_HEARTBEAT_INTERVAL, ", or use --force").to_string(),
            "its plugin is likely running: heartbeat calico-libnetwork/heartbeat renewed 12 s \
             ago (at 2025-06-01T11:59:48Z, younger than 90 s); stop the plugin on that host \
             and wait, or use --force"
        );
    }
}
