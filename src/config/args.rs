//! The raw settings as clap reads them: each a flag and an environment variable.

use std::path::PathBuf;

use clap::Args;

use super::{DEFAULT_NODENAME_FILE, DEFAULT_SOCKET, DEFAULT_STORE};

/// The raw settings as flags and environment give them.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Datastore: `etcdv3` or `local` (default: etcdv3 when an etcd endpoint is set, else local).
    #[arg(long, env = "DATASTORE_TYPE", global = true)]
    pub datastore_type: Option<String>,
    /// Comma-separated etcd URLs, e.g. http://127.0.0.1:2379.
    #[arg(long, env = "ETCD_ENDPOINTS", global = true)]
    pub etcd_endpoints: Option<String>,
    /// etcd host:port (used with ETCD_SCHEME when ETCD_ENDPOINTS is unset).
    #[arg(long, env = "ETCD_AUTHORITY", global = true)]
    pub etcd_authority: Option<String>,
    /// Scheme for ETCD_AUTHORITY: http or https.
    #[arg(long, env = "ETCD_SCHEME", global = true)]
    pub etcd_scheme: Option<String>,
    /// PEM CA certificate for etcd TLS.
    #[arg(long, env = "ETCD_CA_CERT_FILE", global = true)]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// PEM client certificate for etcd TLS.
    #[arg(long, env = "ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM client key for etcd TLS.
    #[arg(long, env = "ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd username.
    #[arg(long, env = "ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(long, env = "ETCD_PASSWORD", global = true, hide_env_values = true)]
    pub etcd_password: Option<crate::datastore::etcd::Secret>,
    /// File of the embedded (local) store.
    #[arg(long, env = "CALICO_LIBNETWORK_STORE", global = true, default_value = DEFAULT_STORE)]
    pub store_path: PathBuf,
    /// Plugin socket Docker connects to.
    #[arg(long, env = "CALICO_LIBNETWORK_SOCKET", global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Second socket serving the IPAM driver alone under the Go plugin's IPAM name
    /// (`--ipam-driver calico-ipam`): a path, or `off`. Default: `calico-ipam.sock` beside
    /// the plugin socket.
    #[arg(long, env = "CALICO_LIBNETWORK_IPAM_ALIAS_SOCKET", global = true)]
    pub ipam_alias_socket: Option<String>,
    /// This host's Calico node name (default: the nodename file, then $HOSTNAME lowercased,
    /// then the kernel hostname lowercased, as calico-node does).
    #[arg(long, env = "NODENAME", global = true)]
    pub nodename: Option<String>,
    /// The file calico-node keeps its node name in: read when NODENAME is unset, written at
    /// start when the plugin creates this host's Node and the file does not exist.
    #[arg(
        long,
        env = "CALICO_NODENAME_FILE",
        global = true,
        default_value = DEFAULT_NODENAME_FILE
    )]
    pub nodename_file: PathBuf,
    /// Log level: error, warn, info, debug or trace (CALICO_DEBUG set means debug).
    #[arg(long, env = "LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log format: text or json (one JSON object per line).
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: String,
    /// Deadline for each Docker request, e.g. 10s or 500ms.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_REQUEST_TIMEOUT",
        global = true,
        default_value = "10s"
    )]
    pub request_timeout: String,
    /// Deadline for each datastore request.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_DATASTORE_TIMEOUT",
        global = true,
        default_value = "5s"
    )]
    pub datastore_timeout: String,
    /// IPv4 pool created at start when no IPv4 pool exists (`none`: no IPv4 pool).
    #[arg(
        long,
        env = "CALICO_IPV4POOL_CIDR",
        global = true,
        default_value = "192.168.0.0/16"
    )]
    pub ipv4_pool_cidr: String,
    /// IPv6 pool created at start when no IPv6 pool exists (none by default).
    #[arg(long, env = "CALICO_IPV6POOL_CIDR", global = true)]
    pub ipv6_pool_cidr: Option<String>,
    /// IPIP mode of the default IPv4 pool: Never, Always or CrossSubnet.
    #[arg(long, env = "CALICO_IPV4POOL_IPIP", global = true)]
    pub ipv4_pool_ipip: Option<String>,
    /// VXLAN mode of the default IPv4 pool: Never, Always or CrossSubnet.
    #[arg(long, env = "CALICO_IPV4POOL_VXLAN", global = true)]
    pub ipv4_pool_vxlan: Option<String>,
    /// VXLAN mode of the default IPv6 pool: Never, Always or CrossSubnet.
    #[arg(long, env = "CALICO_IPV6POOL_VXLAN", global = true)]
    pub ipv6_pool_vxlan: Option<String>,
    /// NAT outgoing of the default IPv4 pool (default true).
    #[arg(long, env = "CALICO_IPV4POOL_NAT_OUTGOING", global = true)]
    pub ipv4_pool_nat_outgoing: Option<String>,
    /// NAT outgoing of the default IPv6 pool (default false).
    #[arg(long, env = "CALICO_IPV6POOL_NAT_OUTGOING", global = true)]
    pub ipv6_pool_nat_outgoing: Option<String>,
    /// Block size of the default IPv4 pool, 20 to 32 (default 26).
    #[arg(long, env = "CALICO_IPV4POOL_BLOCK_SIZE", global = true)]
    pub ipv4_pool_block_size: Option<String>,
    /// Block size of the default IPv6 pool, 116 to 128 (default 122).
    #[arg(long, env = "CALICO_IPV6POOL_BLOCK_SIZE", global = true)]
    pub ipv6_pool_block_size: Option<String>,
    /// Node selector of the default IPv4 pool (default all()).
    #[arg(long, env = "CALICO_IPV4POOL_NODE_SELECTOR", global = true)]
    pub ipv4_pool_node_selector: Option<String>,
    /// Node selector of the default IPv6 pool (default all()).
    #[arg(long, env = "CALICO_IPV6POOL_NODE_SELECTOR", global = true)]
    pub ipv6_pool_node_selector: Option<String>,
    /// Whether BGP leaves the default IPv4 pool's routes out (default false).
    #[arg(long, env = "CALICO_IPV4POOL_DISABLE_BGP_EXPORT", global = true)]
    pub ipv4_pool_disable_bgp_export: Option<String>,
    /// Whether BGP leaves the default IPv6 pool's routes out (default false).
    #[arg(long, env = "CALICO_IPV6POOL_DISABLE_BGP_EXPORT", global = true)]
    pub ipv6_pool_disable_bgp_export: Option<String>,
    /// This host's IPv4 address on its Node (`spec.bgp.ipv4Address`): autodetect (the
    /// default: found by IP_AUTODETECTION_METHOD at start and every
    /// AUTODETECT_POLL_INTERVAL), none, or an address, e.g. 10.0.0.5/24 (without a prefix
    /// length, the prefix of the interface that has it).
    #[arg(long, env = "IP", global = true)]
    pub ip: Option<String>,
    /// This host's IPv6 address on its Node (`spec.bgp.ipv6Address`): none (the default),
    /// autodetect, or an address (without a prefix length: /128).
    #[arg(long, env = "IP6", global = true)]
    pub ip6: Option<String>,
    /// How IP=autodetect finds the address: `first-found` (default), `can-reach=<address
    /// or name>`, `interface=<regex,...>`, `skip-interface=<regex,...>` or `cidr=<cidr,...>`.
    #[arg(long, env = "IP_AUTODETECTION_METHOD", global = true)]
    pub ip_autodetection_method: Option<String>,
    /// How IP6=autodetect finds the address (as IP_AUTODETECTION_METHOD).
    #[arg(long, env = "IP6_AUTODETECTION_METHOD", global = true)]
    pub ip6_autodetection_method: Option<String>,
    /// How often this host's address is found again and, when it changed, rewritten on its
    /// Node.
    #[arg(
        long,
        env = "AUTODETECT_POLL_INTERVAL",
        global = true,
        default_value = "60s"
    )]
    pub autodetect_poll_interval: String,
    /// true: write a new address without checking that no other Node has it.
    #[arg(long, env = "DISABLE_NODE_IP_CHECK", global = true)]
    pub disable_node_ip_check: Option<String>,
    /// Create a Calico profile per network (true/false).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_CREATE_PROFILES",
        global = true,
        default_value = "true"
    )]
    pub create_profiles: String,
    /// Container interface name prefix (Docker appends a number).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_IFPREFIX",
        global = true,
        default_value = "eth"
    )]
    pub ifprefix: String,
    /// MTU of the veth pairs (kernel default when unset).
    #[arg(long, env = "CALICO_LIBNETWORK_VETH_MTU", global = true)]
    pub veth_mtu: Option<String>,
    /// TCP address (host:port) to serve Prometheus metrics on at /metrics; off when unset.
    #[arg(long, env = "CALICO_LIBNETWORK_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<String>,
    /// Capability scope reported to Docker: local or global.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_SCOPE",
        global = true,
        default_value = "local"
    )]
    pub scope: String,
    /// Set to true to create no default pool at start.
    #[arg(long, env = "NO_DEFAULT_POOLS", global = true, default_value = "false")]
    pub no_default_pools: String,
    /// Docker API address, asked (in the background) for network names and container labels
    /// (default: $DOCKER_HOST, then unix:///var/run/docker.sock).
    #[arg(long, env = "CALICO_LIBNETWORK_DOCKER_HOST", global = true)]
    pub docker_host: Option<String>,
    /// Copy `org.projectcalico.label.*` container labels onto WorkloadEndpoints (true/false).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_LABEL_ENDPOINTS",
        global = true,
        default_value = "false"
    )]
    pub label_endpoints: String,
    /// Routes to the other hosts' containers, as Felix programs them: auto (on with etcd),
    /// true or false.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_ROUTES",
        global = true,
        default_value = "auto"
    )]
    pub routes: String,
    /// How long to wait for Docker to show an endpoint's container, for its labels.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_LABEL_POLL_TIMEOUT",
        global = true,
        default_value = "30s"
    )]
    pub label_poll_timeout: String,
    /// Records younger than this are never reclaimed as stale by the start-up
    /// reconciliation or a `--ip` takeover.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_RECONCILE_GRACE",
        global = true,
        default_value = "2m"
    )]
    pub reconcile_grace: String,
    /// How often to reconcile this host after the start-up passes (0: only at start).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_RECONCILE_INTERVAL",
        global = true,
        default_value = "10m"
    )]
    pub reconcile_interval: String,
    /// How often to check that the plugin's firewall rules are still in place (rewritten
    /// when something removed them: `iptables -F`, a firewall reload).
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_RULES_CHECK_INTERVAL",
        global = true,
        default_value = "30s"
    )]
    pub rules_check_interval: String,
    /// How often the plugin renews its heartbeat on its Node (at least 1s; written on the
    /// Node beside it); the commands (`status --all-hosts`, `ipam check --repair --node`,
    /// `node remove`) judge a node dead once its heartbeat is older than three of the
    /// intervals its Node states, or of this one for a Node that states none.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_HEARTBEAT_INTERVAL",
        global = true,
        default_value = "30s"
    )]
    pub heartbeat_interval: String,
    /// Firewall rules the plugin keeps: auto, standalone, felix or off.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_DATAPLANE",
        global = true,
        default_value = "auto"
    )]
    pub dataplane: String,
    /// Which iptables the rules are written with: auto (the variant the host's rules are
    /// in), legacy or nft.
    #[arg(
        long,
        env = "CALICO_LIBNETWORK_IPTABLES_BACKEND",
        global = true,
        default_value = "auto"
    )]
    pub iptables_backend: String,
}
