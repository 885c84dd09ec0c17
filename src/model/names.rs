//! Resource names: WorkloadEndpoint names (Calico's `names` package rules) and DNS-1123
//! subdomain names for everything else.

use crate::error::{Error, Result};

/// The longest resource name (a DNS-1123 subdomain).
pub const MAX_RESOURCE_NAME_LEN: usize = 253;

/// Builds a WorkloadEndpoint name the way libcalico-go does.
///
/// The segments depend on the orchestrator: `k8s` → [node, orch, pod, endpoint], `cni` →
/// [node, orch, containerID, endpoint], `libnetwork` → [node, orch, orch, endpoint] (the
/// workload is ignored), anything else → [node, orch, workload, endpoint]; `workload` carries
/// the pod or container ID for k8s/cni. Each `-` inside a segment is doubled, then the segments
/// are joined with `-`. A segment must be non-empty ("field should be assigned") and must not
/// begin or end with `-`. Felix splits the name back into exactly these 4 parts.
pub fn workload_endpoint_name(
    node: &str,
    orchestrator: &str,
    workload: &str,
    endpoint: &str,
) -> Result<String> {
    let third = match orchestrator {
        "k8s" => ("pod", workload),
        "cni" => ("containerID", workload),
        "libnetwork" => ("orchestrator", orchestrator),
        _ => ("workload", workload),
    };
    let segments = [
        ("node", node),
        ("orchestrator", orchestrator),
        third,
        ("endpoint", endpoint),
    ];
    let mut parts = Vec::with_capacity(4);
    for (field, value) in segments {
        let reason = if value.is_empty() {
            Some("field should be assigned")
        } else if value.starts_with('-') {
            Some("field must not begin with a '-'")
        } else if value.ends_with('-') {
            Some("field must not end with a '-'")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::invalid(format!(
                "build workload endpoint name: error with field {field} = '{value}' ({reason})"
            )));
        }
        parts.push(value.replace('-', "--"));
    }
    Ok(parts.join("-"))
}

/// Splits a WorkloadEndpoint name into its unescaped segments, as Felix does: a single `-`
/// (not at the start) separates, `--` is a literal dash. A valid endpoint name gives 4 parts.
pub fn split_workload_endpoint_name(name: &str) -> Vec<String> {
    let bytes = name.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 1;
    while i < bytes.len() {
        if bytes[i] == b'-' {
            if i + 1 < bytes.len() && bytes[i + 1] == b'-' {
                i += 2;
                continue;
            }
            parts.push(name[start..i].replace("--", "-"));
            start = i + 1;
        }
        i += 1;
    }
    parts.push(name[start.min(name.len())..].replace("--", "-"));
    parts
}

/// Checks a resource name is a DNS-1123 subdomain: 1–253 characters of `[a-z0-9.-]`, made
/// of dot-separated labels that each start and end with a letter or digit.
pub fn validate_resource_name(name: &str) -> Result<()> {
    let fail = |why: &str| {
        Err(Error::invalid(format!(
            "validate resource name {name:?}: {why}"
        )))
    };
    if name.is_empty() {
        return fail("name is empty");
    }
    if name.len() > MAX_RESOURCE_NAME_LEN {
        return fail("name is longer than 253 characters");
    }
    for label in name.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let alnum =
            |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok_chars || !alnum(label.as_bytes().first()) || !alnum(label.as_bytes().last()) {
            return fail(
                "must consist of lowercase alphanumeric characters, '-' or '.', \
                 and each '.'-separated part must start and end with an alphanumeric character",
            );
        }
    }
    Ok(())
}

/// Turns an arbitrary name (e.g. a Docker network name) into a valid resource name.
///
/// The rule, stable across versions:
/// 1. A name that is already valid ([`validate_resource_name`]) is returned unchanged.
/// 2. Otherwise it is lowercased; each dot-separated part has every character outside
///    `[a-z0-9-]` replaced by `-`, runs of `-` collapsed and leading/trailing `-` trimmed;
///    empty parts are dropped and the parts are rejoined with `.`.
/// 3. Because step 2 can map different inputs to the same result (`Net_1`, `net-1`), the
///    result gets the suffix `-` + 8 lowercase hex digits of the 32-bit FNV-1a hash of the
///    original bytes. The base is first cut so the whole fits in 253 characters (then trimmed
///    of trailing `-`/`.`). If the base is empty the name is the 8 hex digits alone.
pub fn resource_name_from(s: &str) -> String {
    if validate_resource_name(s).is_ok() {
        return s.to_string();
    }
    let lower = s.to_lowercase();
    let mut labels = Vec::new();
    for part in lower.split('.') {
        let mut label = String::new();
        for c in part.chars() {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            };
            if !(c == '-' && label.ends_with('-')) {
                label.push(c);
            }
        }
        let label = label.trim_matches('-');
        if !label.is_empty() {
            labels.push(label.to_string());
        }
    }
    let base = labels.join(".");
    let suffix = format!("{:08x}", fnv1a32(s.as_bytes()));
    if base.is_empty() {
        return suffix;
    }
    let mut base = base;
    let room = MAX_RESOURCE_NAME_LEN - suffix.len() - 1;
    if base.len() > room {
        base.truncate(room); // ASCII only by now, so any index is a char boundary.
        while base.ends_with(['-', '.']) {
            base.pop();
        }
    }
    format!("{base}-{suffix}")
}

/// Calico's limit on a label key's name part (Kubernetes' `IsQualifiedName`).
pub const MAX_LABEL_NAME_LEN: usize = 63;

/// Whether `s` is a label key Calico's validator accepts without a prefix
/// (`validateLabels` → Kubernetes' `IsQualifiedName`: at most 63 characters of
/// `[A-Za-z0-9_.-]`, beginning and ending with a letter or digit).
pub fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// The label key a network profile applies to its endpoints (its `labelsToApply` key and
/// `has()` selector): the profile's name when Calico accepts it as a label key, else (a
/// fallback profile's 64-character network ID, a long network name) its first characters,
/// `-` and 8 hex digits of a hash of the whole name, 63 characters at most: calicoctl
/// refuses to re-apply a profile with a longer key (Calico's `validateLabels`).
pub fn label_key(profile: &str) -> String {
    if is_label_name(profile) {
        return profile.to_string();
    }
    let suffix = format!("{:08x}", fnv1a32(profile.as_bytes()));
    let mut base: String = profile
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LABEL_NAME_LEN - suffix.len() - 1)
        .collect();
    while base.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        base.pop();
    }
    while base.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        base.remove(0);
    }
    if base.is_empty() {
        suffix
    } else {
        format!("{base}-{suffix}")
    }
}

/// 32-bit FNV-1a.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_wep_name_examples() {
        for (orchestrator, workload, endpoint, want) in [
            (
                "libnetwork",
                "",
                "abcdefgh",
                "node--1-libnetwork-libnetwork-abcdefgh",
            ),
            (
                "libnetwork",
                "ignored",
                "abcdefgh",
                "node--1-libnetwork-libnetwork-abcdefgh",
            ),
            ("k8s", "pod-name", "eth0", "node--1-k8s-pod--name-eth0"),
            (
                "cni",
                "abcdefa0123456",
                "eth0",
                "node--1-cni-abcdefa0123456-eth0",
            ),
            (
                "foo",
                "foo-foo",
                "abcdefgh",
                "node--1-foo-foo--foo-abcdefgh",
            ),
        ] {
            assert_eq!(
                workload_endpoint_name("node-1", orchestrator, workload, endpoint).unwrap(),
                want
            );
        }
    }

    #[test]
    fn wep_name_errors() {
        let e = workload_endpoint_name("node-1", "cni", "-abc", "eth0").unwrap_err();
        assert!(e.is_invalid());
        assert!(e.to_string().contains("field containerID"), "{e}");
        assert!(
            e.to_string().contains("field must not begin with a '-'"),
            "{e}"
        );
        let e = workload_endpoint_name("node-", "libnetwork", "", "ep").unwrap_err();
        assert!(
            e.to_string()
                .contains("field node = 'node-' (field must not end with a '-')"),
            "{e}"
        );
        let e = workload_endpoint_name("", "libnetwork", "", "ep").unwrap_err();
        assert!(e.to_string().contains("field should be assigned"), "{e}");
        let e = workload_endpoint_name("n", "libnetwork", "", "").unwrap_err();
        assert!(e.to_string().contains("field endpoint"), "{e}");
        let e = workload_endpoint_name("n", "k8s", "", "eth0").unwrap_err();
        assert!(e.to_string().contains("field pod"), "{e}");
    }

    #[test]
    fn names_split_back_into_four_parts() {
        assert_eq!(
            split_workload_endpoint_name("node--1-foo-foo--foo-abcdefgh"),
            vec!["node-1", "foo", "foo-foo", "abcdefgh"]
        );
        assert_eq!(
            split_workload_endpoint_name("my--host-libnetwork-libnetwork-ep"),
            vec!["my-host", "libnetwork", "libnetwork", "ep"]
        );
        assert_eq!(split_workload_endpoint_name("a-b").len(), 2);
    }

    #[test]
    fn resource_name_validation() {
        for ok in ["net1", "a", "my-net.example", "0abc", "a-b-c"] {
            validate_resource_name(ok).unwrap();
        }
        for bad in [
            "",
            "Net1",
            "-a",
            "a-",
            "a..b",
            "a.-b",
            "a_b",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(validate_resource_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resource_names_from_docker_names() {
        assert_eq!(resource_name_from("net1"), "net1");
        assert_eq!(resource_name_from("my-net.v2"), "my-net.v2");
        let a = resource_name_from("My_Net");
        let b = resource_name_from("my_net");
        let c = resource_name_from("my-net");
        assert!(
            a.starts_with("my-net-") && b.starts_with("my-net-"),
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert_eq!(c, "my-net");
        assert_ne!(b, c);
        assert_eq!(resource_name_from("My_Net"), a, "stable");
        for s in [
            "___",
            "_x_",
            "..a..",
            "-lead",
            "trail-",
            "ÄÖÜ",
            "a.b_c",
            &"X".repeat(400),
        ] {
            let n = resource_name_from(s);
            validate_resource_name(&n).unwrap_or_else(|e| panic!("{s:?} -> {n:?}: {e}"));
        }
        assert_eq!(resource_name_from("___").len(), 8);
        assert_eq!(resource_name_from(&"x".repeat(400)).len(), 253);
    }

    #[test]
    fn fnv1a_known_value() {
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
    }

    /// A profile's label key stays within Calico's label validation (`validateLabels` in
    /// libcalico-go/lib/validator/v3/validator.go: `IsQualifiedName`, 63 characters).
    #[test]
    fn label_keys_are_qualified_names() {
        assert_eq!(label_key("net1"), "net1");
        assert_eq!(label_key("my-net.1-0badf00d"), "my-net.1-0badf00d");
        let id = "0123456789abcdef".repeat(4);
        let k = label_key(&id);
        assert_eq!(k.len(), 63, "{k}");
        assert!(k.starts_with(&id[..54]), "{k}");
        assert!(is_label_name(&k), "{k}");
        let long = format!("{}.x", "a".repeat(250));
        let k2 = label_key(&long);
        assert!(is_label_name(&k2) && k2 != k, "{k2}");
        // Distinct long names keep distinct keys.
        assert_ne!(label_key(&"ab".repeat(32)), label_key(&"ba".repeat(32)));
        for ok in ["a", "A-b_c.d", &"x".repeat(63)] {
            assert!(is_label_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", &"x".repeat(64), "ä"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
