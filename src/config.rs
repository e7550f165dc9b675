//! Operator configuration: command-line flags with environment fallbacks (the Helm
//! chart sets the environment). One struct per concern, all plain data.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::crd::{GroupAttribute, SubjectKind, UserAttribute};

#[derive(Args, Debug, Clone)]
pub struct RunConfig {
    /// Namespace of the operator: token Secrets and the leader-election Lease live here.
    #[arg(long, env = "KUBE_SCIM_NAMESPACE", default_value = "kube-scim")]
    pub namespace: String,

    /// Address the SCIM endpoint listens on.
    #[arg(long, env = "KUBE_SCIM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KUBE_SCIM_PROBE_LISTEN", default_value = "0.0.0.0:8081")]
    pub probe_listen: SocketAddr,

    /// Public base URL of the SCIM endpoint (e.g. https://scim.example.com/scim/v2), used
    /// in `meta.location` and `Location`. Derived from the request's Host and
    /// X-Forwarded-Proto when unset.
    #[arg(long, env = "KUBE_SCIM_BASE_URL")]
    pub base_url: Option<String>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "KUBE_SCIM_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most resources returned in one list response.
    #[arg(long, env = "KUBE_SCIM_MAX_RESULTS", default_value_t = 1000)]
    pub max_results: usize,

    /// Seconds a connection may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open): a client dribbling headers (slowloris) is cut off.
    #[arg(long, env = "KUBE_SCIM_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_read_timeout_seconds: u64,

    /// Seconds within which every SCIM request is answered, whatever the API server does:
    /// work still running then stops and the answer is 503 with Retry-After (a change cut
    /// half-way is finished by the client's retry). Entra gives up on a request after 60 s;
    /// the default leaves room for an ingress and the network.
    #[arg(long, env = "KUBE_SCIM_REQUEST_DEADLINE_SECONDS",
          default_value_t = crate::scim::server::DEFAULT_REQUEST_DEADLINE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=55))]
    pub request_deadline_seconds: u64,

    /// Extension attributes served besides the core and enterprise User schemas, each the
    /// full name a client writes (`urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User:costCode`),
    /// optionally `=TYPE` (string, boolean, integer, decimal, dateTime, reference, binary;
    /// default string) and `[]` for multi-valued. The URN ends in `:User` or `:Group`.
    /// Attributes outside the served schemas are refused (400 invalidSyntax).
    #[arg(long, env = "KUBE_SCIM_EXTENSION_ATTRIBUTES", value_delimiter = ',')]
    pub extension_attributes: Vec<String>,

    /// Serve the SCIM endpoint.
    #[arg(long, env = "KUBE_SCIM_ENABLE_SCIM", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_scim: bool,

    /// Run the RBAC controller (under leader election).
    #[arg(long, env = "KUBE_SCIM_ENABLE_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_controller: bool,

    /// How the caches make their first list: `cache` takes the API server's watch cache in
    /// one response (resourceVersion=0, as client-go informers do; several times faster to
    /// start with a large tenant; users, groups, members and bindings are parsed one object
    /// at a time as the response arrives, so it is never held whole); `paged` reads etcd
    /// 500 objects at a time (a consistent read, slower start).
    #[arg(long, env = "KUBE_SCIM_INITIAL_LIST", value_enum, default_value_t = InitialList::Cache)]
    pub initial_list: InitialList,

    /// Concurrent requests a ScimUser list (`--initial-list cache`) is split into, by the
    /// users' partition label (experimental; 1 = one request, the default). The API server
    /// encodes each response on one core: split, an idle control plane answered 100,000
    /// users a quarter sooner (8 was the fastest of 2, 4 and 8), a busy one no sooner.
    /// Not the default until a start at 100,000 users that hung once (its API server near
    /// the machine's memory) is understood (docs/scale.md, "Split user lists").
    #[arg(long, env = "KUBE_SCIM_USER_LIST_REQUESTS", default_value_t = DEFAULT_USER_LIST_REQUESTS, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub user_list_requests: u32,

    /// Bytes of members a group's member shard (ScimGroupMembers object) fills to before
    /// the group opens another (of 64). New members go to one shard with room, so a
    /// PATCH rewrites one shard: smaller spreads a group over more, smaller objects (the
    /// test suite uses this to exercise many shards with small groups).
    #[arg(long, env = "KUBE_SCIM_MEMBER_SHARD_FILL_BYTES",
          default_value_t = crate::store::DEFAULT_SHARD_FILL_BYTES,
          value_parser = clap::value_parser!(u64).range(512..=1_000_000))]
    pub member_shard_fill_bytes: u64,

    #[command(flatten)]
    pub controller: ControllerConfig,

    #[command(flatten)]
    pub webhook: WebhookConfig,

    #[command(flatten)]
    pub log: LogConfig,
}

#[derive(Args, Debug, Clone)]
pub struct ControllerConfig {
    /// Use a coordination.k8s.io Lease so that only one replica reconciles.
    #[arg(long, env = "KUBE_SCIM_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "KUBE_SCIM_LEASE_NAME",
        default_value = "kube-scim-controller"
    )]
    pub lease_name: String,

    /// Identity of this replica in the Lease (defaults to the pod name / hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long the Lease stays valid without renewal: a standby takes over this long after the leader's last renewal (e.g. `15s`, `500ms`, `1m`).
    #[arg(long, env = "KUBE_SCIM_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: DurationArg,

    /// The leader stops writing when no renewal succeeded for this long (measured from when the renewal was sent); must be shorter than the lease duration: the difference is the safety margin.
    #[arg(long, env = "KUBE_SCIM_LEASE_RENEW_DEADLINE", default_value = "10s")]
    pub lease_renew_deadline: DurationArg,

    /// How often a standby tries to take the Lease (and a leader retries a failed renewal).
    #[arg(long, env = "KUBE_SCIM_LEASE_RETRY_PERIOD", default_value = "2s")]
    pub lease_retry_period: DurationArg,

    /// Default subject kind of bindings: User, Group or UserAndGroup.
    #[arg(long, env = "KUBE_SCIM_SUBJECT_KIND", value_enum, default_value_t = SubjectKindArg::User)]
    pub subject_kind: SubjectKindArg,

    /// Default attribute naming User subjects.
    #[arg(long, env = "KUBE_SCIM_USER_ATTRIBUTE", value_enum, default_value_t = UserAttributeArg::UserName)]
    pub user_attribute: UserAttributeArg,

    /// Default prefix of User subjects (kube-apiserver --oidc-username-prefix).
    #[arg(long, env = "KUBE_SCIM_USER_PREFIX", default_value = "")]
    pub user_prefix: String,

    /// Default attribute naming Group subjects.
    #[arg(long, env = "KUBE_SCIM_GROUP_ATTRIBUTE", value_enum, default_value_t = GroupAttributeArg::ExternalId)]
    pub group_attribute: GroupAttributeArg,

    /// Default prefix of Group subjects (kube-apiserver --oidc-groups-prefix).
    #[arg(long, env = "KUBE_SCIM_GROUP_PREFIX", default_value = "")]
    pub group_prefix: String,

    /// ClusterRoles that need `allowProtectedRoles: true` on a mapping (cluster-admin always does).
    #[arg(
        long,
        env = "KUBE_SCIM_PROTECTED_ROLES",
        value_delimiter = ',',
        default_value = "cluster-admin"
    )]
    pub protected_roles: Vec<String>,

    /// ClusterRoles that may be bound cluster-wide (a ClusterGroupRoleMapping's clusterRoles), as names or `prefix*` patterns. Cluster-wide edit or admin reaches kube-system's ServiceAccounts and Secrets: list them only deliberately.
    #[arg(
        long,
        env = "KUBE_SCIM_CLUSTER_WIDE_ROLES",
        value_delimiter = ',',
        default_value = "view"
    )]
    pub cluster_wide_roles: Vec<String>,

    /// Protected namespaces (kube-system, kube-public, kube-node-lease, the operator's own) that mappings may nevertheless bind in.
    #[arg(
        long,
        env = "KUBE_SCIM_BINDABLE_PROTECTED_NAMESPACES",
        value_delimiter = ','
    )]
    pub bindable_protected_namespaces: Vec<String>,

    /// Share of a mapping's subjects whose removal in one reconcile is held for confirmation (>= 1 disables).
    #[arg(long, env = "KUBE_SCIM_MASS_REMOVAL_THRESHOLD", default_value_t = 0.5)]
    pub mass_removal_threshold: f64,

    /// The mass-removal guard only applies to mappings with at least this many subjects.
    #[arg(
        long,
        env = "KUBE_SCIM_MASS_REMOVAL_MIN_SUBJECTS",
        default_value_t = 10
    )]
    pub mass_removal_min_subjects: usize,

    /// About how many bytes one subject change may rewrite across the copies of a binding (one per namespace a mapping reaches): parts are sized to this / copies (8 KiB to 800 kB each).
    #[arg(long, env = "KUBE_SCIM_MAX_CHANGE_BYTES", default_value_t = 400_000)]
    pub max_change_bytes: usize,

    /// Fan-out budget of one mapping: its subjects × its bindings (a RoleBinding per namespace; a ClusterRoleBinding counts once). Over it, the mapping adds no subject and no namespace until it fits; removals always go through. 0 = unlimited.
    #[arg(long, env = "KUBE_SCIM_MAX_FANOUT", default_value_t = crate::controller::plan::DEFAULT_MAX_FANOUT)]
    pub max_fanout: u64,

    /// User status writes per second, after a burst of one second's worth (0 = unpaced). A user's status is a report that may trail: paced, a bulk import or a big group being mapped leaves the API server to SCIM writes and bindings. Mapping and group statuses are not paced.
    #[arg(
        long,
        env = "KUBE_SCIM_USER_STATUS_WRITES_PER_SECOND",
        default_value_t = 100
    )]
    pub user_status_writes_per_second: u32,
}

/// The validating admission webhook for mappings (HTTPS). Served when a certificate is
/// given; the API server then asks it before storing a mapping.
#[derive(Args, Debug, Clone)]
pub struct WebhookConfig {
    /// Address the admission webhook listens on (HTTPS).
    #[arg(long, env = "KUBE_SCIM_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub webhook_listen: SocketAddr,

    /// PEM certificate (chain) of the webhook; re-read when it changes. The webhook is
    /// off without it.
    #[arg(
        long,
        env = "KUBE_SCIM_WEBHOOK_CERT_FILE",
        requires = "webhook_key_file"
    )]
    pub webhook_cert_file: Option<PathBuf>,

    /// PEM private key of the webhook certificate.
    #[arg(
        long,
        env = "KUBE_SCIM_WEBHOOK_KEY_FILE",
        requires = "webhook_cert_file"
    )]
    pub webhook_key_file: Option<PathBuf>,
}

impl WebhookConfig {
    /// Certificate and key files, when the webhook is on.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.webhook_cert_file, &self.webhook_key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct LogConfig {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "KUBE_SCIM_LOG", default_value = "info")]
    pub log_filter: String,

    /// Log as JSON lines.
    #[arg(long, env = "KUBE_SCIM_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKindArg {
    User,
    Group,
    UserAndGroup,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAttributeArg {
    UserName,
    Email,
    ExternalId,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupAttributeArg {
    ExternalId,
    DisplayName,
}

/// A duration flag: `15s`, `500ms`, `1m`, `2.5s`, or a plain number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationArg(pub std::time::Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected a number with ms, s or m (e.g. 15s, 500ms, 1m)")]
pub struct DurationError(String);

impl std::str::FromStr for DurationArg {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60.0)
        } else {
            (t, 1.0)
        };
        number
            .trim()
            .parse::<f64>()
            .ok()
            .map(|n| n * scale)
            .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < 1e9)
            .map(|secs| DurationArg(std::time::Duration::from_secs_f64(secs)))
            .ok_or_else(|| DurationError(s.to_owned()))
    }
}

impl From<SubjectKindArg> for SubjectKind {
    fn from(v: SubjectKindArg) -> Self {
        match v {
            SubjectKindArg::User => SubjectKind::User,
            SubjectKindArg::Group => SubjectKind::Group,
            SubjectKindArg::UserAndGroup => SubjectKind::UserAndGroup,
        }
    }
}

impl From<UserAttributeArg> for UserAttribute {
    fn from(v: UserAttributeArg) -> Self {
        match v {
            UserAttributeArg::UserName => UserAttribute::UserName,
            UserAttributeArg::Email => UserAttribute::Email,
            UserAttributeArg::ExternalId => UserAttribute::ExternalId,
        }
    }
}

impl From<GroupAttributeArg> for GroupAttribute {
    fn from(v: GroupAttributeArg) -> Self {
        match v {
            GroupAttributeArg::ExternalId => GroupAttribute::ExternalId,
            GroupAttributeArg::DisplayName => GroupAttribute::DisplayName,
        }
    }
}

impl RunConfig {
    pub fn listing(&self) -> Listing {
        Listing {
            initial: self.initial_list,
            user_list_requests: self.user_list_requests,
        }
    }
}

/// Default of `--user-list-requests`: one request (see the flag).
pub const DEFAULT_USER_LIST_REQUESTS: u32 = 1;

/// How the caches list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    pub initial: InitialList,
    /// Requests a ScimUser list is split into (see `crate::watch::Partitions`).
    pub user_list_requests: u32,
}

impl Default for Listing {
    fn default() -> Self {
        Listing {
            initial: InitialList::default(),
            user_list_requests: DEFAULT_USER_LIST_REQUESTS,
        }
    }
}

impl Listing {
    pub fn watcher_config(self) -> kube::runtime::watcher::Config {
        self.initial.watcher_config()
    }

    /// How a ScimUser watch splits its list; None: one request.
    pub fn user_partitions(self) -> Option<crate::watch::Partitions> {
        (self.user_list_requests > 1).then_some(crate::watch::Partitions {
            label: crate::crd::USER_PARTITION_LABEL,
            buckets: crate::crd::USER_PARTITIONS,
            lists: self.user_list_requests,
        })
    }
}

/// How a cache makes its first list (and every re-list after a watch expires).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialList {
    /// From the API server's watch cache, in one response (resourceVersion=0).
    #[default]
    Cache,
    /// From etcd, in pages of 500 (a consistent read).
    Paged,
}

impl InitialList {
    /// The watcher configuration for this way of listing.
    pub fn watcher_config(self) -> kube::runtime::watcher::Config {
        let config = kube::runtime::watcher::Config::default();
        match self {
            // Without a page size: kube drops `resourceVersion=0` from a list that has a
            // limit (kube-core's ListParams), which made this a paged consistent read
            // from etcd, 500 objects a page (measured at 20,000 ScimUsers: 40 pages,
            // 16–31 s on the loaded 2-core machine; the watch cache answers the same list
            // in one response in 1.6–5 s).
            InitialList::Cache => kube::runtime::watcher::Config {
                page_size: None,
                ..config.any_semantic()
            },
            InitialList::Paged => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The watch-cache list must not carry a limit: kube would then leave out
    /// `resourceVersion=0` and page through etcd instead.
    #[test]
    fn the_cache_list_is_one_unpaged_any_version_list() {
        use kube::runtime::watcher::ListSemantic;
        let cache = InitialList::Cache.watcher_config();
        assert_eq!(cache.page_size, None);
        assert_eq!(cache.list_semantic, ListSemantic::Any);
        let paged = InitialList::Paged.watcher_config();
        assert_eq!(paged.page_size, Some(500));
        assert_eq!(paged.list_semantic, ListSemantic::MostRecent);
    }

    /// Every SCIM answer comes within the request deadline: 25 s unless set, never more
    /// than 55 s (Entra gives up after 60).
    #[test]
    fn the_request_deadline_defaults_under_30_s_and_stays_under_entras_limit() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunConfig,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("kube-scim").chain(args.iter().copied()))
                .map(|c| c.run.request_deadline_seconds)
        };
        assert_eq!(parse(&[]).ok(), Some(25));
        assert_eq!(parse(&["--request-deadline-seconds", "55"]).ok(), Some(55));
        for bad in ["0", "56", "60", "-1", "25s"] {
            assert!(
                parse(&["--request-deadline-seconds", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_parse_with_units() {
        let d = |s: &str| s.parse::<DurationArg>().map(|d| d.0);
        assert_eq!(d("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(d("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(d(" 3 "), Ok(Duration::from_secs(3)));
        for bad in ["", "s", "-1s", "1h", "abc", "NaNs", "1e30s"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }
}
